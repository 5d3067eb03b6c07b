"""SFT with TRL on an srlm run's SFT data: the trainer `srlm run` calls with `[sft] trainer =
"trl"` for M1 (the seed SFT and the judge bootstrap's), which srlm ships and writes into the
run; by hand, on a GPU cluster:

    accelerate launch --config_file deepspeed_zero3.yaml scripts/train_sft_trl.py \
        --model meta-llama/Llama-3.1-8B-Instruct --data runs/big/seed/sft.trl.jsonl --out m1-big

DATA is TRL's conversational prompt-completion format, one example a line:
{"prompt": [{"role": "user", "content": ...}], "completion": [{"role": "assistant", ...}]};
the loss is on the completion's tokens only, as srlm's own SFT. Each logged step is printed as
one JSON line and appended to OUT/metrics.jsonl; a run killed mid-way resumes from the last
checkpoint in OUT when started again.

With --lora-rank, a LoRA adapter trains instead of every weight (PEFT): OUT then holds the merged
model and OUT/adapter the adapter, as srlm's own trainer writes them.

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
from trl import SFTConfig, SFTTrainer

ap = argparse.ArgumentParser()
ap.add_argument("--model", required=True)
ap.add_argument("--data", required=True)
ap.add_argument("--out", required=True)
ap.add_argument("--lr", type=float, default=5e-5)
ap.add_argument("--epochs", type=float, default=1.0)
ap.add_argument("--max-length", type=int, default=1024)
ap.add_argument("--max-steps", type=int, default=-1)
ap.add_argument("--batch-size", type=int, default=4)
ap.add_argument("--save-steps", type=int, default=50)
ap.add_argument("--seed", type=int, default=0)
ap.add_argument("--lora-rank", type=int, default=0,
                help="train a LoRA adapter of this rank on every linear layer; 0: every weight")
ap.add_argument("--lora-alpha", type=float, default=None, help="LoRA's alpha (default: 2 x rank)")
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


data = load_dataset("json", data_files=args.data, split="train")
model = AutoModelForCausalLM.from_pretrained(args.model)
tokenizer = AutoTokenizer.from_pretrained(args.model)
peft_config = None
if args.lora_rank:
    from peft import LoraConfig

    peft_config = LoraConfig(r=args.lora_rank, lora_alpha=args.lora_alpha or 2 * args.lora_rank,
                             lora_dropout=0.0, target_modules="all-linear", task_type="CAUSAL_LM")
config = SFTConfig(
    output_dir=args.out,
    learning_rate=args.lr,
    num_train_epochs=args.epochs,
    max_steps=args.max_steps,
    max_length=args.max_length,
    completion_only_loss=True,
    per_device_train_batch_size=args.batch_size,
    save_steps=args.save_steps,
    logging_steps=1,
    seed=args.seed,
    report_to=[],
    bf16=torch.cuda.is_available() and torch.cuda.is_bf16_supported(),
    use_cpu=not torch.cuda.is_available(),
)
trainer = SFTTrainer(
    model=model,
    args=config,
    train_dataset=data,
    processing_class=tokenizer,
    peft_config=peft_config,
    callbacks=[Metrics()],
)
checkpoints = glob.glob(os.path.join(args.out, "checkpoint-*"))
trainer.train(resume_from_checkpoint=bool(checkpoints) or None)
save(trainer)
tokenizer.save_pretrained(args.out)
