#!/usr/bin/env python3
"""Reference outputs for srlm's trainer tests, from PyTorch, transformers, TRL and PEFT.

What it writes (under crates/srlm-train/tests/goldens/):
  smollm2_step.json + smollm2_step.safetensors
        One SFT step of SmolLM2-135M-Instruct (the Q4_1 GGUF srlm fetches, dequantized to f32)
        in PyTorch: token ids and loss masks of two chat examples (prompt masked), the loss (mean
        NLL over reply tokens), the global gradient norm, gradients of named tensors (slices),
        and the same slices after one torch.optim.AdamW step with clip_grad_norm_(1.0).
  smollm2_step_autocast.json
        The same step's loss and gradient slices under torch.autocast("cpu", torch.bfloat16)
        (PyTorch's mixed precision: bf16 matmuls, f32 weights), each gradient's relative L2
        distance from the f32 step's: how far PyTorch's own bf16 training lands from f32, the
        yardstick for srlm's bf16 matmuls (`--only autocast` writes just this file).
  dpo_trl.json
        TRL's DPOTrainer._compute_loss (trl 1.16, run on a fixture of per-token log-probs through
        a stand-in model) for the sigmoid loss, IPO, and sigmoid + "sft" (rpo_alpha), with the
        metrics TRL logs; plus conservative DPO (label smoothing) by its formula.
  tiny-sft/, tiny-lora/
        Checkpoints written by `srlm sft` on the tiny random Llama of the engine goldens (the
        commands are in checkpoints.json), and the logits transformers (full, merged LoRA) and
        PEFT (base + adapter) compute from them.

How to regenerate:
  python3 -m venv .venv && .venv/bin/pip install torch==2.15.0 transformers==5.24.0 gguf==0.19.0 \
      accelerate trl==1.16.0 peft==0.21.2 safetensors numpy
  cargo build --release
  SRLM_GGUF=path/to/SmolLM2-135M-Instruct.Q4_1.gguf .venv/bin/python scripts/make_train_goldens.py
"""
import json
import os
import shutil
import subprocess
import tempfile
from collections import defaultdict
from pathlib import Path
from types import SimpleNamespace

import torch
from safetensors.torch import save_file

ROOT = Path(__file__).resolve().parent.parent
OUT = ROOT / "crates/srlm-train/tests/goldens"
FIXTURES = ROOT / "crates/srlm-train/tests/fixtures"
TINY = ROOT / "crates/srlm-engine/tests/goldens/tiny-llama"
SRLM = Path(os.environ.get("SRLM_BIN", ROOT / "target/release/srlm"))

SFT_CONVS = [
    [{"role": "user", "content": "Name three primary colors."},
     {"role": "assistant", "content": "Red, yellow and blue are the traditional primary colors."}],
    [{"role": "system", "content": "You are a terse assistant."},
     {"role": "user", "content": "What is the boiling point of water at sea level?"},
     {"role": "assistant", "content": "100 degrees Celsius (212 degrees Fahrenheit)."}],
]
# (name, rows): gradient and post-step slices compared by the test.
SLICES = [
    ("model.norm.weight", None),
    ("model.layers.0.input_layernorm.weight", None),
    ("model.layers.0.self_attn.q_proj.weight", 8),
    ("model.layers.0.self_attn.k_proj.weight", 8),
    ("model.layers.3.self_attn.o_proj.weight", 4),
    ("model.layers.15.mlp.down_proj.weight", 4),
    ("model.layers.29.mlp.gate_proj.weight", 4),
]
LR, WD, MAX_NORM = 1e-4, 0.01, 1.0


def tokenize(tok, conv):
    """Prompt masked, reply trained: each piece tokenized on its own, as srlm does."""
    prompt = tok.apply_chat_template(conv[:-1], tokenize=False, add_generation_prompt=True)
    full = tok.apply_chat_template(conv, tokenize=False)
    assert full.startswith(prompt)
    p = tok(prompt, add_special_tokens=False)["input_ids"]
    c = tok(full[len(prompt):], add_special_tokens=False)["input_ids"]
    return p + c, [0] * len(p) + [1] * len(c)


def sft_batch(tok):
    """SFT_CONVS tokenized: the (ids, mask) lists, and as right-padded (b, t) tensors."""
    seqs = [tokenize(tok, c) for c in SFT_CONVS]
    t = max(len(s[0]) for s in seqs)
    ids = torch.zeros(len(seqs), t, dtype=torch.long)
    mask = torch.zeros(len(seqs), t)
    for i, (s, m) in enumerate(seqs):
        ids[i, :len(s)] = torch.tensor(s)
        mask[i, :len(m)] = torch.tensor(m, dtype=torch.float32)
    return seqs, ids, mask


def sft_loss(model, ids, mask, autocast=False):
    """Mean NLL over reply tokens (right padding never reaches real tokens); the matmuls under
    torch.autocast(bf16) when asked, the log-softmax in f32."""
    with torch.autocast("cpu", dtype=torch.bfloat16, enabled=autocast):
        logits = model(input_ids=ids).logits  # (b, t, vocab)
    logp = torch.log_softmax(logits[:, :-1].float(), dim=-1)
    target_logp = logp.gather(-1, ids[:, 1:, None]).squeeze(-1)
    tmask = mask[:, 1:]
    return -(target_logp * tmask).sum() / tmask.sum()


def smollm2_step():
    from transformers import AutoModelForCausalLM, AutoTokenizer

    gguf = Path(os.environ["SRLM_GGUF"])
    tok = AutoTokenizer.from_pretrained(str(gguf.parent), gguf_file=gguf.name)
    model = AutoModelForCausalLM.from_pretrained(str(gguf.parent), gguf_file=gguf.name, dtype=torch.float32)
    model.train()  # no dropout in this config: train() changes nothing numerically
    seqs, ids, mask = sft_batch(tok)
    loss = sft_loss(model, ids, mask)
    loss.backward()
    params = dict(model.named_parameters())
    tensors = {}
    for name, rows in SLICES:
        g = params[name].grad
        tensors[f"grad/{name}"] = (g if rows is None else g[:rows]).detach().clone().contiguous()
        w = params[name]
        tensors[f"before/{name}"] = (w if rows is None else w[:rows]).detach().clone().contiguous()
    emb_rows = sorted({int(x) for x in ids[0, 1:6]})
    tensors["grad/embed_rows"] = params["model.embed_tokens.weight"].grad[emb_rows].clone()
    tensors["before/embed_rows"] = params["model.embed_tokens.weight"][emb_rows].detach().clone()
    norm = torch.nn.utils.clip_grad_norm_(model.parameters(), MAX_NORM)
    opt = torch.optim.AdamW(model.parameters(), lr=LR, betas=(0.9, 0.999), eps=1e-8, weight_decay=WD)
    opt.step()
    for name, rows in SLICES:
        w = params[name]
        tensors[f"after/{name}"] = (w if rows is None else w[:rows]).detach().clone().contiguous()
    tensors["after/embed_rows"] = params["model.embed_tokens.weight"][emb_rows].detach().clone()
    save_file(tensors, str(OUT / "smollm2_step.safetensors"))
    meta = {
        "conversations": SFT_CONVS,
        "ids": [s for s, _ in seqs],
        "train_mask": [m for _, m in seqs],
        "loss": loss.item(),
        "grad_norm": norm.item(),
        "lr": LR, "weight_decay": WD, "max_grad_norm": MAX_NORM,
        "slices": [{"name": n, "rows": r} for n, r in SLICES],
        "embed_rows": emb_rows,
    }
    (OUT / "smollm2_step.json").write_text(json.dumps(meta, indent=1))
    print(f"smollm2: loss {loss.item():.5f}, grad norm {norm.item():.4f}")


def trl_dpo():
    from trl.trainer.dpo_trainer import DPOTrainer

    g = torch.Generator().manual_seed(3)
    m, t = 3, 9
    # completion masks: prompt of 3 tokens, replies of different lengths, right padding
    lens = [4, 6, 2, 5, 3, 6]  # chosen 0..m, rejected m..2m
    completion = torch.zeros(2 * m, t)
    for i, n in enumerate(lens):
        completion[i, 3:3 + n] = 1
    shift = completion[:, 1:]
    token_logps = (-torch.rand(2 * m, t - 1, generator=g) * 3.0) * shift  # zero where not a target
    ref = -torch.rand(2 * m, generator=g) * 8.0 - 2.0

    class StandIn:
        training = True

        def __call__(self, **kw):
            z = torch.zeros(2 * m, t - 1)
            return SimpleNamespace(log_probs=token_logps.clone().requires_grad_(False), entropy=z,
                                   mean_logits=z, is_top1=z.bool(), aux_loss=None)

    def run(loss_types, weights, beta):
        acc = SimpleNamespace(device="cpu", gather_for_metrics=lambda x: x, gather=lambda x: x)
        fake = SimpleNamespace(model=StandIn(), accelerator=acc, loss_types=loss_types, loss_weights=weights,
                               beta=beta, f_divergence_type="reverse_kl", ld_alpha=None, precompute_ref_logps=True,
                               aux_loss_enabled=False, use_weighting=False, _metrics=defaultdict(lambda: defaultdict(list)),
                               _total_train_tokens=0, _tp_size=1, label_smoothing=0.0)
        inputs = {"input_ids": torch.zeros(2 * m, t, dtype=torch.long), "attention_mask": torch.ones(2 * m, t),
                  "completion_mask": completion, "ref_chosen_logps": ref[:m], "ref_rejected_logps": ref[m:]}
        loss = DPOTrainer._compute_loss(fake, fake.model, inputs, False)
        metrics = {k: v[-1] for k, v in fake._metrics["train"].items()
                   if k.startswith("rewards/") or k.startswith("logps/")}
        return {"loss": float(loss), "metrics": metrics}

    cases = {
        "sigmoid": run(["sigmoid"], [1.0], 0.1),
        "ipo": run(["ipo"], [1.0], 0.1),
        "sigmoid_rpo": run(["sigmoid", "sft"], [1.0, 0.5], 0.1),
    }
    # Conservative DPO (label smoothing eps): -(1-eps) log s(b h) - eps log s(-b h), mean over pairs.
    sums = token_logps.sum(1)
    h = (sums[:m] - sums[m:]) - (ref[:m] - ref[m:])
    eps, beta = 0.2, 0.1
    cdpo = (-(1 - eps) * torch.nn.functional.logsigmoid(beta * h)
            - eps * torch.nn.functional.logsigmoid(-beta * h)).mean()
    cases["cdpo"] = {"loss": float(cdpo)}
    fixture = {
        "pairs": m,
        "token_logps": [[float(x) for x, keep in zip(row, mrow) if keep] for row, mrow in zip(token_logps, shift)],
        "ref_chosen": [float(x) for x in ref[:m]],
        "ref_rejected": [float(x) for x in ref[m:]],
        "cases": cases,
    }
    (OUT / "dpo_trl.json").write_text(json.dumps(fixture, indent=1))
    print("dpo:", {k: round(v["loss"], 6) for k, v in cases.items()})


TRAIN_ARGS = ["--min-lr", "1e-3", "--warmup-steps", "1", "--max-steps", "4",
              "--micro-batch", "2", "--grad-accum", "2", "--weight-decay", "0.01", "--seed", "7",
              "--max-len", "128", "--threads", "1",
              # The committed checkpoints were trained in f32: on a CPU with AMX `auto` would
              # train in bf16 and not reproduce them.
              "--precision", "f32"]
FULL_ARGS = ["--lr", "1e-2"]
LORA_ARGS = ["--lora-rank", "4", "--lora-alpha", "8", "--lr", "5e-2"]


def checkpoints():
    from peft import PeftModel
    from transformers import AutoModelForCausalLM, AutoTokenizer

    tok = AutoTokenizer.from_pretrained(str(TINY))
    ids = torch.tensor([tok("Say hello. Hello there, friend! score: 5")["input_ids"]])
    logits = {}
    result = {"ids": ids[0].tolist(), "train_args": TRAIN_ARGS, "full_args": FULL_ARGS,
              "lora_args": LORA_ARGS}
    for name, extra in [("tiny-sft", FULL_ARGS), ("tiny-lora", LORA_ARGS)]:
        with tempfile.TemporaryDirectory() as tmp:
            out = Path(tmp) / name
            cmd = [str(SRLM), "sft", "--model", str(TINY), "--data", str(FIXTURES / "tiny_sft.jsonl"),
                   "--out", str(out), *TRAIN_ARGS, *extra]
            subprocess.run(cmd, check=True)
            dst = OUT / name
            shutil.rmtree(dst, ignore_errors=True)
            shutil.copytree(out, dst, ignore=shutil.ignore_patterns("resume", "metrics.jsonl", ".*"))
        model = AutoModelForCausalLM.from_pretrained(str(dst), dtype=torch.float32).eval()
        with torch.no_grad():
            logits[f"{name}/transformers"] = model(input_ids=ids).logits[0].contiguous()
        if name == "tiny-lora":
            base = AutoModelForCausalLM.from_pretrained(str(TINY), dtype=torch.float32)
            peft = PeftModel.from_pretrained(base, str(dst / "adapter")).eval()
            with torch.no_grad():
                logits[f"{name}/peft"] = peft(input_ids=ids).logits[0].contiguous()
    (OUT / "checkpoints.json").write_text(json.dumps(result, indent=1))
    save_file(logits, str(OUT / "checkpoints.safetensors"))
    print("checkpoints: written")


def smollm2_autocast():
    from transformers import AutoModelForCausalLM, AutoTokenizer

    gguf = Path(os.environ["SRLM_GGUF"])
    tok = AutoTokenizer.from_pretrained(str(gguf.parent), gguf_file=gguf.name)
    _, ids, mask = sft_batch(tok)

    def step(autocast):
        model = AutoModelForCausalLM.from_pretrained(str(gguf.parent), gguf_file=gguf.name, dtype=torch.float32)
        model.train()
        loss = sft_loss(model, ids, mask, autocast)
        loss.backward()
        params = dict(model.named_parameters())
        grads = {n: (params[n].grad if r is None else params[n].grad[:r]).detach().clone() for n, r in SLICES}
        return loss.item(), grads

    loss32, g32 = step(False)
    loss16, g16 = step(True)
    rel = {n: float((g16[n] - g32[n]).norm() / g32[n].norm()) for n, _ in SLICES}
    meta = {"loss_f32": loss32, "loss_autocast_bf16": loss16,
            "loss_rel_err": abs(loss16 - loss32) / loss32, "grad_rel_err": rel}
    (OUT / "smollm2_step_autocast.json").write_text(json.dumps(meta, indent=1))
    print(f"smollm2 autocast: loss {loss16:.5f} vs f32 {loss32:.5f}; grad rel err {rel}")


def main():
    import sys
    OUT.mkdir(parents=True, exist_ok=True)
    if sys.argv[1:] == ["--only", "autocast"]:
        smollm2_autocast()
        return
    trl_dpo()
    checkpoints()
    smollm2_step()
    smollm2_autocast()


if __name__ == "__main__":
    main()
