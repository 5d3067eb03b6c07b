#!/usr/bin/env python3
"""Reference values for srlm-core's judge-agreement metrics, from scipy.

Writes crates/srlm-core/tests/goldens/judge_metrics.json: random prompts with human ranks (ties
included) and judge scores (means of k=3 integer samples, so many ties; some missing), with
scipy.stats.spearmanr and scipy.stats.kendalltau (tau-b) of (score, -rank) per prompt (null where
scipy gives nan), and the aggregate metrics computed here independently of srlm.

Also writes rouge_l.json: ROUGE-L F of string pairs by Google's rouge_score (no stemming), the
similarity filter of self-instruction.

  python3 -m venv .venv && .venv/bin/pip install scipy==1.17.1 numpy rouge-score==0.1.2
  .venv/bin/python scripts/make_metric_goldens.py
"""
import json
import math
import random
from pathlib import Path

from scipy import stats

OUT = Path(__file__).resolve().parent.parent / "crates/srlm-core/tests/goldens/judge_metrics.json"


def case(rng):
    n = rng.choice([1, 2, 3, 3, 4, 5, 6])
    ranks = list(range(n))
    if n > 2 and rng.random() < 0.2:
        ranks[-1] = ranks[-2]  # a human tie
    rng.shuffle(ranks)
    scores = []
    for r in ranks:
        if rng.random() < 0.1:
            scores.append(None)  # the judge's output did not parse
            continue
        base = max(0, min(5, 5 - r + rng.choice([-1, 0, 0, 1])))
        samples = [max(0, min(5, base + rng.choice([-1, 0, 0, 0, 1]))) for _ in range(3)]
        scores.append(sum(samples) / 3)
    if rng.random() < 0.1:
        scores = [3.0 if s is not None else None for s in scores]  # all tied
    return ranks, scores


def nan_to_none(x):
    return None if x is None or (isinstance(x, float) and math.isnan(x)) else float(x)


def main():
    rng = random.Random(11)
    cases = [case(rng) for _ in range(60)]
    per_prompt = []
    agg = dict(pairs=0, agree=0, ties=0, exact=0, exact_prompts=0, sp=[], kt=[], undefined=0, fives=0,
               five_best=0, missing=0)
    for ranks, scores in cases:
        kept = [(r, s) for r, s in zip(ranks, scores) if s is not None]
        agg["missing"] += len(scores) - len(kept)
        x = [s for _, s in kept]
        y = [-r for r, _ in kept]
        if len(kept) >= 2:
            sp = nan_to_none(stats.spearmanr(x, y).statistic)
            kt = nan_to_none(stats.kendalltau(x, y, variant="b").statistic)
        else:
            sp = kt = None
        per_prompt.append({"human_ranks": ranks, "scores": scores, "spearman": sp, "kendall_tau": kt})
        if sp is None or kt is None:
            agg["undefined"] += 1
        else:
            agg["sp"].append(sp)
            agg["kt"].append(kt)
        pairs = right = 0
        for i in range(len(kept)):
            for j in range(i + 1, len(kept)):
                (ri, si), (rj, sj) = kept[i], kept[j]
                if ri == rj:
                    continue
                pairs += 1
                if si == sj:
                    agg["ties"] += 1
                elif (si > sj) == (ri < rj):
                    right += 1
        agg["pairs"] += pairs
        agg["agree"] += right
        if pairs:
            agg["exact_prompts"] += 1
            agg["exact"] += right == pairs
        for r, s in kept:
            if s >= 4.5:
                agg["fives"] += 1
                agg["five_best"] += r == 0
    expected = {
        "pairs": agg["pairs"],
        "pairwise_accuracy": agg["agree"] / agg["pairs"],
        "pairwise_ties": agg["ties"] / agg["pairs"],
        "exact_match": agg["exact"] / agg["exact_prompts"],
        "spearman": sum(agg["sp"]) / len(agg["sp"]),
        "kendall_tau": sum(agg["kt"]) / len(agg["kt"]),
        "correlation_undefined": agg["undefined"],
        "five_best": agg["five_best"] / agg["fives"],
        "missing_scores": agg["missing"],
    }
    OUT.parent.mkdir(parents=True, exist_ok=True)
    OUT.write_text(json.dumps({"prompts": per_prompt, "expected": expected}, indent=1))
    print(expected)
    rouge()


ROUGE_PAIRS = [
    ("Write a haiku about autumn leaves.", "Write a haiku about falling autumn leaves."),
    ("Give three tips for staying healthy.", "List three tips to stay healthy and fit."),
    ("Explain recursion to a child.", "What is the capital of France?"),
    ("Translate 'good morning' into Spanish.", "Translate good morning to Spanish, please!"),
    ("Summarize the following article in 2 sentences.", "Summarise this article in two sentences."),
    ("Sort the list [3, 1, 2] in Python.", "In Python, sort the list 3 1 2"),
    ("", "Anything at all"),
    ("C++ vs. Rust: which is safer?", "Which is safer, Rust or C++?"),
    ("the the the cat", "the cat the the"),
    ("Compose a limerick about a cat named Tom who loves to nap in the sun all day long.",
     "Write a limerick about a sleepy cat who naps all day in the sun."),
]


def rouge():
    from rouge_score import rouge_scorer

    scorer = rouge_scorer.RougeScorer(["rougeL"], use_stemmer=False)
    cases = [{"a": a, "b": b, "f": scorer.score(b, a)["rougeL"].fmeasure} for a, b in ROUGE_PAIRS]
    (OUT.parent / "rouge_l.json").write_text(json.dumps(cases, indent=1))


if __name__ == "__main__":
    main()
