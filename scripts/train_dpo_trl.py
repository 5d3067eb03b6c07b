"""DPO with TRL on pairs exported by `srlm export pairs`: how to train a large model on a GPU
cluster and bring it back into the loop.

    srlm export pairs --run runs/default --out pairs.jsonl
    accelerate launch --config_file deepspeed_zero3.yaml scripts/train_dpo_trl.py \
        --model runs/default/models/m1 --pairs pairs.jsonl --out m2-big
    srlm run ... / srlm judge --model m2-big ...     # the HF folder goes back in with --model

Needs: pip install trl transformers datasets accelerate (checked with trl 1.16).
"""
import argparse

import torch

from datasets import load_dataset
from transformers import AutoModelForCausalLM, AutoTokenizer
from trl import DPOConfig, DPOTrainer

ap = argparse.ArgumentParser()
ap.add_argument("--model", required=True)
ap.add_argument("--pairs", required=True)
ap.add_argument("--out", required=True)
ap.add_argument("--beta", type=float, default=0.1)
ap.add_argument("--lr", type=float, default=1e-6)
ap.add_argument("--max-steps", type=int, default=-1)
args = ap.parse_args()

pairs = load_dataset("json", data_files=args.pairs, split="train")
model = AutoModelForCausalLM.from_pretrained(args.model)
tokenizer = AutoTokenizer.from_pretrained(args.model)
config = DPOConfig(
    output_dir=args.out,
    beta=args.beta,
    learning_rate=args.lr,
    max_steps=args.max_steps,
    per_device_train_batch_size=2,
    report_to=[],
    bf16=torch.cuda.is_available() and torch.cuda.is_bf16_supported(),
    use_cpu=not torch.cuda.is_available(),
)
trainer = DPOTrainer(model=model, args=config, train_dataset=pairs, processing_class=tokenizer)
trainer.train()
trainer.save_model(args.out)
tokenizer.save_pretrained(args.out)
