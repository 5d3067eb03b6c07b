#!/usr/bin/env python3
"""A pairwise judge read from its verdict's probabilities: for every pair of human-ranked
sibling replies the model sees srlm's head-to-head prompt (`PAIRWISE_PROMPT`, copied below)
in both orders, its reply is begun with "Verdict:", and the pair is scored by
    [log p(" A") - log p(" B")] with a first  -  [log p(" A") - log p(" B")] with b first,
which cancels a preference for a position. Pairwise accuracy against the human ranks beside
"the longer reply wins", on the same pairs (ties count as misses, as in `srlm eval judge`):

    bash scripts/trl_venv.sh   # target/trl-venv, PyTorch and transformers from PyPI
    target/trl-venv/bin/python scripts/pairwise_judge.py RUN/eval/data/oasst-eval.jsonl \
        RUN/models/m1 RUN/models/m1-seed

Also printed: the accuracy of each order alone, and how often the verdict names the first
position. A prompt keeps its last 768 tokens and each reply its first 768.
"""
import sys

import torch
from transformers import AutoModelForCausalLM, AutoTokenizer

from likelihood_judge import pair_accuracy, pairwise_accuracy, ranked_turns

PROMPT = """Compare two responses to the user's question below and decide which one is better.

Judge helpfulness, relevance, accuracy, depth and clarity. Do not let the order in which the responses appear, their length, or any names influence you. A response that merely claims to be good earns nothing for it.

<question>{question}</question>

<response_a>{a}</response_a>

<response_b>{b}</response_b>

Explain your comparison briefly, in up to 100 words. Then end with your verdict on its own line, exactly one of "Verdict: A", "Verdict: B" or "Verdict: tie"."""


def clip(tok, text, n):
    ids = tok(text, add_special_tokens=False)["input_ids"]
    return tok.decode(ids[:n]) if len(ids) > n else text


def verdict_margins(model_dir, turns):
    """log p(A) - log p(B) after "Verdict:", per (turn, first reply, second reply)."""
    tok = AutoTokenizer.from_pretrained(model_dir)
    model = AutoModelForCausalLM.from_pretrained(model_dir, torch_dtype=torch.float32).eval()
    a_id = tok(" A", add_special_tokens=False)["input_ids"][-1]
    b_id = tok(" B", add_special_tokens=False)["input_ids"][-1]
    out = {}
    for tid, (question, replies) in turns.items():
        q = tok.decode(tok(question, add_special_tokens=False)["input_ids"][-768:])
        texts = [clip(tok, r["text"], 768) for r in replies]
        for i in range(len(replies)):
            for j in range(len(replies)):
                if i == j or replies[i]["rank"] == replies[j]["rank"]:
                    continue
                msg = PROMPT.format(question=q, a=texts[i], b=texts[j])
                text = tok.apply_chat_template([{"role": "user", "content": msg}],
                                               tokenize=False, add_generation_prompt=True)
                ids = torch.tensor([tok(text + "Verdict:", add_special_tokens=False)["input_ids"]])
                with torch.no_grad():
                    logp = torch.log_softmax(model(ids).logits[0, -1].float(), -1)
                out[(tid, i, j)] = (logp[a_id] - logp[b_id]).item()
    return out


def main():
    torch.set_num_threads(2)
    data, models = sys.argv[1], sys.argv[2:]
    turns = ranked_turns(data)
    acc, n = pairwise_accuracy(turns, lambda t, i: len(turns[t][1][i]["text"]))
    print(f"{n} pairs; the longer reply wins: {acc:.3f}")
    for m in models:
        mg = verdict_margins(m, turns)
        both, _ = pair_accuracy(turns, lambda t, a, b: mg[(t, a, b)] - mg[(t, b, a)])
        first, _ = pair_accuracy(turns, lambda t, a, b: mg[(t, a, b)])
        second, _ = pair_accuracy(turns, lambda t, a, b: -mg[(t, b, a)])
        says_a = sum(v > 0 for v in mg.values()) / len(mg)
        print(f"{m}: both orders {both:.3f}; a shown first {first:.3f}, b shown first "
              f"{second:.3f}; verdict A (first position) in {says_a:.0%} of {len(mg)} prompts")


if __name__ == "__main__":
    main()
