#!/usr/bin/env python3
# How far two `srlm eval judge` outputs on the same data agree, reply by reply: the same
# written text, the same written score, the mean gap of their expected scores, and how many of
# the human-ranked pairs each orders the same way. README's mixed against mixed-bf16 figures:
#
#   srlm eval judge --model M --out mixed.jsonl --k 1 --temperature 0 --top-p 1 --score expected --weights mixed
#   srlm eval judge --model M --out bf16.jsonl  --k 1 --temperature 0 --top-p 1 --score expected --weights mixed-bf16
#   python3 scripts/compare_judgements.py mixed.jsonl bf16.jsonl
#
# Also two `srlm eval vs` outputs' judgements.jsonl, restricted to the ids holding a string
# (README's M1 side judged again: the same command, once against another model A):
#
#   python3 scripts/compare_judgements.py vs1/judgements.jsonl vs2/judgements.jsonl /b/
import json, sys, itertools
def load(p):
    return {r["id"]: r for r in map(json.loads, open(p))}
a, b = load(sys.argv[1]), load(sys.argv[2])
only = sys.argv[3] if len(sys.argv) > 3 else ""
ids = sorted(i for i in set(a) & set(b) if only in i)
same_raw = sum(a[i]["raw"] == b[i]["raw"] for i in ids)
same_score = sum(a[i].get("score") == b[i].get("score") for i in ids)
ea = {i: a[i]["score_distribution"]["expected"] for i in ids}
eb = {i: b[i]["score_distribution"]["expected"] for i in ids}
mad = sum(abs(ea[i] - eb[i]) for i in ids) / len(ids)
max_gap = max(abs(ea[i] - eb[i]) for i in ids)
# pairs within a prompt, ordered by human rank
# (only `eval judge` records have human ranks)
by = {}
for i in ids:
    if "human_rank" in a[i]:
        by.setdefault(a[i]["prompt_id"], []).append(i)
agree = total = 0
for pid, rs in by.items():
    for x, y in itertools.combinations(rs, 2):
        if a[x]["human_rank"] == a[y]["human_rank"]:
            continue
        total += 1
        agree += (ea[x] > ea[y]) == (eb[x] > eb[y])
print(f"replies {len(ids)}: same text {same_raw}, same written score {same_score}, "
      f"mean |expected diff| {mad:.3f} (largest {max_gap:.3f}); pairs with the same verdict {agree}/{total}")
