#!/usr/bin/env python3
"""A judge that needs no judge prompt: each human-ranked reply scored by its mean token
log-probability under a model (given the prompter's turn in the model's chat template), and
the pairwise accuracy of that score against the human ranks, beside "the longer reply wins" and
the reply's summed log-probability, on the same pairs. With two models, also the DPO implicit
reward, log pi_A(reply) - log pi_B(reply). README's "likelihood" row:

    bash scripts/trl_venv.sh   # target/trl-venv, PyTorch and transformers from PyPI
    target/trl-venv/bin/python scripts/likelihood_judge.py RUN/eval/data/oasst-eval.jsonl \
        RUN/models/m2 RUN/models/m1 RUN/models/m1-seed

The data is an Open Assistant trees file (builtin:oasst-eval, as a run writes it into
RUN/eval/data); every prompter turn with two or more ranked, non-synthetic replies counts, as
in `srlm eval judge`. A prompt keeps its last 768 tokens and a reply its first 1,024.
"""
import json
import sys

import torch
from transformers import AutoModelForCausalLM, AutoTokenizer


def ranked_turns(path):
    turns = {}

    def walk(m):
        if m.get("role") == "prompter":
            rs = [r for r in m.get("replies", [])
                  if r.get("rank") is not None and not r.get("synthetic")]
            if len(rs) >= 2:
                turns[m["message_id"]] = (m["text"], rs)
        for r in m.get("replies", []):
            walk(r)

    for line in open(path):
        walk(json.loads(line)["prompt"])
    return turns


def reply_logps(model_dir, turns):
    """(sum, mean) of the reply's token log-probabilities, per (turn, reply index)."""
    tok = AutoTokenizer.from_pretrained(model_dir)
    model = AutoModelForCausalLM.from_pretrained(model_dir, torch_dtype=torch.float32).eval()
    out = {}
    for tid, (question, replies) in turns.items():
        prompt = tok.apply_chat_template([{"role": "user", "content": question}],
                                         tokenize=False, add_generation_prompt=True)
        p_ids = tok(prompt, add_special_tokens=False)["input_ids"][-768:]
        for i, r in enumerate(replies):
            r_ids = tok(r["text"] + tok.eos_token, add_special_tokens=False)["input_ids"][:1024]
            ids = torch.tensor([p_ids + r_ids])
            with torch.no_grad():
                logp = torch.log_softmax(model(ids).logits[0, :-1].float(), -1)
            # Position t predicts token t + 1; the reply's tokens start at len(p_ids).
            token_logps = logp.gather(1, ids[0, 1:, None])[:, 0][len(p_ids) - 1:]
            out[(tid, i)] = (token_logps.sum().item(), token_logps.mean().item())
    return out


def pair_accuracy(turns, prefer):
    """Share of reply pairs with different human ranks where `prefer(turn, a, b)` (> 0: a is
    better, < 0: b is, 0: a tie, which counts as a miss, as in `srlm eval judge`) agrees with
    humans, and the number of pairs."""
    right = total = 0
    for tid, (_, rs) in turns.items():
        for a in range(len(rs)):
            for b in range(a + 1, len(rs)):
                if rs[a]["rank"] == rs[b]["rank"]:
                    continue
                total += 1
                p = prefer(tid, a, b)
                if p != 0 and (p > 0) == (rs[a]["rank"] < rs[b]["rank"]):
                    right += 1
    return right / total, total


def pairwise_accuracy(turns, score):
    """`pair_accuracy` of a score per reply: the higher-scored reply is preferred."""
    def prefer(t, a, b):
        sa, sb = score(t, a), score(t, b)
        return (sa > sb) - (sa < sb)

    return pair_accuracy(turns, prefer)


def main():
    torch.set_num_threads(2)
    data, models = sys.argv[1], sys.argv[2:]
    turns = ranked_turns(data)
    acc, n = pairwise_accuracy(turns, lambda t, i: len(turns[t][1][i]["text"]))
    print(f"{n} pairs; the longer reply wins: {acc:.3f}")
    logps = {m: reply_logps(m, turns) for m in models}
    for m in models:
        lp = logps[m]
        mean, _ = pairwise_accuracy(turns, lambda t, i: lp[(t, i)][1])
        total, _ = pairwise_accuracy(turns, lambda t, i: lp[(t, i)][0])
        print(f"{m}: mean token log-prob {mean:.3f}, summed log-prob {total:.3f}")
    if len(models) >= 2:
        a, b = logps[models[0]], logps[models[1]]
        acc, _ = pairwise_accuracy(turns, lambda t, i: a[(t, i)][0] - b[(t, i)][0])
        print(f"implicit reward log pi({models[0]}) - log pi({models[1]}): {acc:.3f}")


if __name__ == "__main__":
    main()
