"""DPO with TRL on pairs exported by `srlm export pairs`: the trainer `srlm run` calls with
`[dpo] trainer = "trl"` (srlm ships this file and writes it into the run), and a way to train a
large model on a GPU cluster and bring it back into the loop by hand.

    srlm export pairs --run runs/default --out pairs.jsonl
    accelerate launch --config_file deepspeed_zero3.yaml scripts/train_dpo_trl.py \
        --model runs/default/models/m1 --pairs pairs.jsonl --out m2-big
    srlm run ... / srlm judge --model m2-big ...     # the HF folder goes back in with --model

Each logged step is printed as one JSON line and appended to OUT/metrics.jsonl; a run killed
mid-way resumes from the last checkpoint in OUT when started again.

With --lora-rank, a LoRA adapter trains instead of every weight (PEFT); --adapter DIR continues
an adapter over --model, the reference then being the model with that adapter (TRL keeps a
frozen copy of it). OUT then holds the merged model and OUT/adapter the adapter over --model:
what `srlm run` needs to serve each M_t as one adapter over M1 (`reload = "lora"`).

Needs: pip install trl (checked with trl 1.16, transformers 5.24, torch 2.15), and peft for
LoRA (checked with peft 0.21).
"""
import argparse
import glob
import json
import os

import torch

from datasets import load_dataset
from transformers import AutoModelForCausalLM, AutoTokenizer, TrainerCallback
from trl import DPOConfig, DPOTrainer

ap = argparse.ArgumentParser()
ap.add_argument("--model", required=True)
ap.add_argument("--pairs", required=True)
ap.add_argument("--out", required=True)
ap.add_argument("--beta", type=float, default=0.1)
ap.add_argument("--lr", type=float, default=1e-6)
ap.add_argument("--epochs", type=float, default=1.0)
ap.add_argument("--max-length", type=int, default=1024)
ap.add_argument("--max-steps", type=int, default=-1)
ap.add_argument("--batch-size", type=int, default=2)
ap.add_argument("--save-steps", type=int, default=50)
ap.add_argument("--seed", type=int, default=0)
ap.add_argument("--lora-rank", type=int, default=0,
                help="train a LoRA adapter of this rank on every linear layer; 0: every weight")
ap.add_argument("--lora-alpha", type=float, default=None, help="LoRA's alpha (default: 2 x rank)")
ap.add_argument("--adapter", default=None, help="a PEFT adapter over --model to continue")
args = ap.parse_args()


class Metrics(TrainerCallback):
    """Each log as a JSON line: printed (srlm streams it) and kept in OUT/metrics.jsonl."""

    def on_log(self, _args, state, _control, logs=None, **_kwargs):
        if not state.is_world_process_zero or not logs:
            return
        line = json.dumps({"step": state.global_step, **logs})
        print(line, flush=True)
        os.makedirs(args.out, exist_ok=True)
        with open(os.path.join(args.out, "metrics.jsonl"), "a") as f:
            f.write(line + "\n")


def save(trainer):
    """The model into OUT; with LoRA, merged there and its adapter in OUT/adapter, as srlm's own
    trainer writes them (one process: under ZeRO-3 save the adapter and merge it afterwards)."""
    model = trainer.accelerator.unwrap_model(trainer.model)
    if not hasattr(model, "peft_config"):
        trainer.save_model(args.out)
        return
    if "ref" in model.peft_config:  # TRL's frozen copy of a continued adapter
        model.delete_adapter("ref")
    model.save_pretrained(os.path.join(args.out, "adapter"))
    model.merge_and_unload().save_pretrained(args.out)


pairs = load_dataset("json", data_files=args.pairs, split="train")
model = AutoModelForCausalLM.from_pretrained(args.model)
tokenizer = AutoTokenizer.from_pretrained(args.model)
peft_config = None
if args.adapter:
    from peft import PeftModel

    model = PeftModel.from_pretrained(model, args.adapter, is_trainable=True)
elif args.lora_rank:
    from peft import LoraConfig

    peft_config = LoraConfig(r=args.lora_rank, lora_alpha=args.lora_alpha or 2 * args.lora_rank,
                             lora_dropout=0.0, target_modules="all-linear", task_type="CAUSAL_LM")
config = DPOConfig(
    output_dir=args.out,
    beta=args.beta,
    learning_rate=args.lr,
    num_train_epochs=args.epochs,
    max_length=args.max_length,
    max_steps=args.max_steps,
    per_device_train_batch_size=args.batch_size,
    save_steps=args.save_steps,
    logging_steps=1,
    seed=args.seed,
    report_to=[],
    bf16=torch.cuda.is_available() and torch.cuda.is_bf16_supported(),
    use_cpu=not torch.cuda.is_available(),
)
trainer = DPOTrainer(
    model=model,
    args=config,
    train_dataset=pairs,
    processing_class=tokenizer,
    peft_config=peft_config,
    callbacks=[Metrics()],
)
checkpoints = glob.glob(os.path.join(args.out, "checkpoint-*"))
trainer.train(resume_from_checkpoint=bool(checkpoints) or None)
save(trainer)
tokenizer.save_pretrained(args.out)
