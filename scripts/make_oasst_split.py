#!/usr/bin/env python3
"""The Open Assistant data srlm ships in its binary: the 60 human-ranked trees of
../shared/data/oasst/trees.jsonl (Apache-2.0, LAION-AI/Open-Assistant), split by tree into a
held-out evaluation part and a training part, pruned to the levels srlm reads.

  crates/srlm/data/oasst/eval.jsonl   trees whose sha256(message_tree_id) is even: the judge is
                                      evaluated on their first-turn ranked replies, and nothing
                                      srlm trains on ever comes from them
  crates/srlm/data/oasst/train.jsonl  the other trees: judge-training data (EFT) may use them

Each tree keeps the oasst1 export format (so every srlm loader of Open Assistant trees reads
it) with its prompt, the assistant replies, the prompter's follow-ups and the assistant's
replies to those (depth 0 to 3); deeper turns and fields srlm does not read are dropped.
Trees marked synthetic are dropped here, as srlm's loader would drop them.

How to regenerate (no packages needed):
  python3 scripts/make_oasst_split.py [path/to/trees.jsonl]
The test `the_shipped_oasst_split_is_the_shared_data_split_by_tree` checks the files against
this rule on ../shared/data.
"""
import hashlib
import json
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
SRC = Path(sys.argv[1]) if len(sys.argv) > 1 else ROOT.parent / "shared/data/oasst/trees.jsonl"
OUT = ROOT / "crates/srlm/data/oasst"
KEEP = ["message_id", "text", "role", "lang", "rank", "synthetic", "deleted"]


def split_of(tree_id):
    return "eval" if int(hashlib.sha256(tree_id.encode()).hexdigest(), 16) % 2 == 0 else "train"


def prune(msg, depth):
    out = {k: msg[k] for k in KEEP if k in msg}
    if depth < 3:
        out["replies"] = [prune(r, depth + 1) for r in msg.get("replies", [])]
    return out


def main():
    parts = {"eval": [], "train": []}
    for line in SRC.read_text().splitlines():
        if not line.strip():
            continue
        tree = json.loads(line)
        if tree["prompt"].get("synthetic"):
            continue
        pruned = {"message_tree_id": tree["message_tree_id"], "tree_state": tree.get("tree_state"),
                  "prompt": prune(tree["prompt"], 0)}
        parts[split_of(tree["message_tree_id"])].append(pruned)
    OUT.mkdir(parents=True, exist_ok=True)
    for name, trees in parts.items():
        text = "".join(json.dumps(t, ensure_ascii=False) + "\n" for t in trees)
        (OUT / f"{name}.jsonl").write_text(text)
        print(f"{name}: {len(trees)} trees")


if __name__ == "__main__":
    main()
