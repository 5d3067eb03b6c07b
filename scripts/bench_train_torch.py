#!/usr/bin/env python3
"""PyTorch's figure for `srlm bench train`: one full fine-tuning step of SmolLM2-135M-Instruct
(the GGUF srlm fetches, dequantized to f32), batch 4 x 256 tokens, AdamW, on the CPU.

  .venv/bin/pip install torch==2.15.0 transformers==5.24.0 gguf==0.19.0
  SRLM_GGUF=path/to/SmolLM2-135M-Instruct.Q4_1.gguf .venv/bin/python scripts/bench_train_torch.py [--bf16] [--threads 2]

Prints the best of 3 measured steps (after one warm-up) and the peak resident memory, as
`srlm bench train` does, so the two can be run one after the other on the same machine.
"""
import argparse
import json
import os
import resource
import time
from pathlib import Path

import torch
from transformers import AutoModelForCausalLM

ap = argparse.ArgumentParser()
ap.add_argument("--bf16", action="store_true", help="bf16 autocast for the matmuls")
ap.add_argument("--threads", type=int, default=os.cpu_count())
ap.add_argument("--batch", type=int, default=4)
ap.add_argument("--seq-len", type=int, default=256)
ap.add_argument("--steps", type=int, default=3)
a = ap.parse_args()
torch.set_num_threads(a.threads)
gguf = Path(os.environ["SRLM_GGUF"])
model = AutoModelForCausalLM.from_pretrained(str(gguf.parent), gguf_file=gguf.name, dtype=torch.float32)
model.train()
opt = torch.optim.AdamW(model.parameters(), lr=1e-6)
g = torch.Generator().manual_seed(0)
ids = torch.randint(0, model.config.vocab_size, (a.batch, a.seq_len), generator=g)


def step():
    t0 = time.perf_counter()
    with torch.autocast("cpu", dtype=torch.bfloat16, enabled=a.bf16):
        logits = model(input_ids=ids).logits
    loss = torch.nn.functional.cross_entropy(logits[:, :-1].float().reshape(-1, logits.size(-1)), ids[:, 1:].reshape(-1))
    t1 = time.perf_counter()
    loss.backward()
    t2 = time.perf_counter()
    torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
    opt.step()
    opt.zero_grad(set_to_none=True)
    t3 = time.perf_counter()
    return t1 - t0, t2 - t1, t3 - t2


step()
best = min((step() for _ in range(a.steps)), key=sum)
tokens = a.batch * a.seq_len
peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
print(json.dumps({"bench": "train-torch", "torch": torch.__version__, "bf16": a.bf16, "threads": a.threads,
                  "tok_s": tokens / sum(best), "forward_s": best[0], "backward_s": best[1], "optimizer_s": best[2],
                  "peak_rss_mib": peak}))
