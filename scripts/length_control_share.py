#!/usr/bin/env python3
"""How often `pairs.length_control` decides an iteration's pairs rather than the judge.

For each RUN/iterN: the spread of the judge's (expected) scores over a prompt's candidates,
and the share of pairs whose chosen answer is not the top-scored candidate (length control
took a shorter one within delta of the best). With a judge whose scores barely differ between
candidates, a fixed delta makes most chosen answers "the shortest near the top", so DPO
learns brevity more than the judge's taste.

Usage: scripts/length_control_share.py RUN [RUN ...]   (reads iterN/{candidates,judgements,pairs}.jsonl)
"""
import collections
import json
import statistics
import sys
from pathlib import Path


def read(path):
    with open(path) as f:
        return [json.loads(line) for line in f if line.strip()]


def candidate_score(judgements):
    """Mean judge score per candidate id: the expected score where there is one."""
    scores = collections.defaultdict(list)
    for j in judgements:
        dist = j.get("score_distribution")
        s = dist["expected"] if dist else j.get("score")
        if s is not None:
            scores[j["candidate_id"]].append(s)
    return {cid: statistics.mean(v) for cid, v in scores.items()}


def iteration(dir):
    cands = read(dir / "candidates.jsonl")
    score = candidate_score(read(dir / "judgements.jsonl"))
    by_prompt = collections.defaultdict(list)  # prompt id -> [(score, chars)]
    for c in cands:
        if c["id"] in score:
            by_prompt[c["prompt_id"]].append((score[c["id"]], len(c["response"])))
    pairs = read(dir / "pairs.jsonl")
    overridden, shortest, spreads = 0, 0, []
    for p in pairs:
        scored = by_prompt[p["prompt_id"]]
        best = max(s for s, _ in scored)
        spreads.append(best - min(s for s, _ in scored))
        overridden += abs(p["chosen_score"] - best) > 1e-9
        shortest += len(p["chosen"]) == min(n for _, n in scored)
    return len(pairs), overridden, shortest, statistics.median(spreads)


def main():
    print("| run | iteration | pairs | chosen is not the top-scored | chosen is the shortest | median score spread |")
    print("| --- | --- | --- | --- | --- | --- |")
    for run in map(Path, sys.argv[1:]):
        for it in sorted(run.glob("iter*")):
            if not (it / "pairs.jsonl").exists():
                continue
            n, over, short, spread = iteration(it)
            print(f"| {run.name} | {it.name} | {n} | {over} ({over / n:.2f}) | {short} ({short / n:.2f}) | {spread:.2f} |")


if __name__ == "__main__":
    main()
