#!/usr/bin/env bash
# Training speed of srlm against PyTorch on the same model and step, back to back and
# alternating (srlm, PyTorch, srlm, PyTorch, ...), so that a noisy VM's drift hits both alike:
# the figures of README's training table and of issue 18's notes.
#
#   scripts/bench_train_vs_torch.sh [ROUNDS] [PRECISION]     # PRECISION: bf16 (default) or f32
#
# PyTorch comes from scripts/trl_venv.sh (torch 2.15 for the CPU, with transformers) plus PyPI's
# gguf, to read the same GGUF srlm trains from (dequantized to f32). Each line is the best of 3
# measured steps after one warm-up (batch 4 x 256 tokens, 2 threads); the CPU is printed first.
set -euo pipefail
rounds="${1:-3}"
precision="${2:-bf16}"
root="$(cd "$(dirname "$0")/.." && pwd)"
cd "$root"
venv_bin="$(scripts/trl_venv.sh)"
"$venv_bin/python" -c "import gguf" 2>/dev/null ||
    "$venv_bin/python" -m pip install --quiet --disable-pip-version-check "gguf==0.19.0" >&2
cargo build --release --quiet
model="$(target/release/srlm fetch)"
torch_flag=""
[ "$precision" = "bf16" ] && torch_flag="--bf16"
lscpu | grep "Model name"
for r in $(seq "$rounds"); do
    echo "== round $r"
    target/release/srlm bench train --model "$model" --threads 2 --precision "$precision" |
        grep -E "^(cpu|setup|sft step|dpo step|peak)"
    SRLM_GGUF="$model" "$venv_bin/python" scripts/bench_train_torch.py --threads 2 $torch_flag 2>/dev/null |
        tail -1 | "$venv_bin/python" -c 'import json, sys; d = json.load(sys.stdin); print("torch %s step   %6.1f tok/s  (forward %.2f s, backward %.2f s, optimizer %.2f s), peak %.0f MiB" % ("bf16" if d["bf16"] else "f32", d["tok_s"], d["forward_s"], d["backward_s"], d["optimizer_s"], d["peak_rss_mib"]))'
done
