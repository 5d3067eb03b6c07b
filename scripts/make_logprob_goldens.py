#!/usr/bin/env python3
"""Reference log-probabilities and expected judge scores for srlm's tests, from transformers on
the tiny random Llama folder the engine tests use (crates/srlm-engine/tests/goldens/tiny-llama,
written by scripts/make_engine_goldens.py).

What it writes: crates/srlm-engine/tests/goldens/tiny-llama/logprobs.json
  greedy  for two prompts, 8 greedy tokens and, at each, the generated token's log-probability
          and the 5 most likely tokens with theirs (log_softmax of transformers' logits)
  sampled the same prompt's log-softmax row at its last position, in full (the engine must
          report the model's own distribution whatever temperature it samples at)
  score   for judge texts ending in "Score: ", the distribution over the score digits at the
          next position: p(d) summed over the vocabulary's tokens that read as the digit d (0-5)
          not followed by another digit, renormalised over the six; its mass before that; and
          the expected score sum d p(d) (G-Eval's reading, as srlm_core::judge defines it)

How to regenerate:
  python3 -m venv .venv && .venv/bin/pip install torch==2.15.0 transformers==5.24.0 safetensors tokenizers numpy
  .venv/bin/python scripts/make_logprob_goldens.py
"""
import json
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parent.parent
TINY = ROOT / "crates/srlm-engine/tests/goldens/tiny-llama"


def log_softmax_last(model, ids):
    with torch.no_grad():
        logits = model(torch.tensor([ids])).logits[0, -1].double()
    return torch.log_softmax(logits, dim=-1)


def main():
    from transformers import AutoModelForCausalLM, AutoTokenizer

    tok = AutoTokenizer.from_pretrained(str(TINY))
    model = AutoModelForCausalLM.from_pretrained(str(TINY), dtype=torch.float32)
    model.eval()
    out = {"greedy": [], "score": []}
    for text in ["the quick brown fox", "def main():\n    return"]:
        ids = tok(text, add_special_tokens=False)["input_ids"]
        seq, steps = list(ids), []
        for _ in range(8):
            lp = log_softmax_last(model, seq)
            top = torch.topk(lp, 5)
            nxt = int(top.indices[0])
            steps.append({"id": nxt, "logprob": float(lp[nxt]),
                          "top": [[int(i), float(v)] for i, v in zip(top.indices, top.values)]})
            seq.append(nxt)
        out["greedy"].append({"prompt_ids": ids, "steps": steps})
    ids = out["greedy"][0]["prompt_ids"]
    out["sampled"] = {"prompt_ids": ids, "logprobs": log_softmax_last(model, ids).tolist()}

    digit_of = {}
    for i in range(model.config.vocab_size):
        s = tok.decode([i])
        if s and s[0] in "012345" and not (len(s) > 1 and s[1].isdigit()):
            digit_of[i] = int(s[0])
    for text in ["how are you today? the answer is good.\nScore: ",
                 "hello world, the quick brown fox jumps over the lazy dog.\nScore: "]:
        ids = tok(text, add_special_tokens=False)["input_ids"]
        p = log_softmax_last(model, ids).exp()
        w = [0.0] * 6
        for i, d in digit_of.items():
            w[d] += float(p[i])
        mass = sum(w)
        probs = [x / mass for x in w]
        out["score"].append({"text": text, "prompt_ids": ids, "probs": probs, "mass": mass,
                             "expected": sum(d * q for d, q in enumerate(probs))})
    (TINY / "logprobs.json").write_text(json.dumps(out, indent=1))
    print("logprobs.json written")


if __name__ == "__main__":
    main()
