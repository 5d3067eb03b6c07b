#!/usr/bin/env bash
# Makes (once) the Python environment with TRL (and PEFT, for LoRA) that `[dpo] trainer = "trl"` needs, under
# ${SRLM_TRL_VENV:-target/trl-venv}, from PyPI, and prints its bin/ folder (put it first on
# PATH for `srlm run`). The external-trainer tests use it; so can you:
#
#   PATH="$(scripts/trl_venv.sh):$PATH" srlm run --config my.toml    # with [dpo] trainer = "trl"
#
# PyPI's torch for Linux brings its CUDA libraries (about 6 GB installed); it trains on the CPU
# when there is no GPU.
set -euo pipefail
here="$(cd "$(dirname "$0")" && pwd)"
venv="${SRLM_TRL_VENV:-$here/../target/trl-venv}"
if [ ! -x "$venv/bin/python" ] || ! "$venv/bin/python" -c "import trl, torch, peft" 2>/dev/null; then
    python3 -m venv "$venv" >&2
    "$venv/bin/python" -m pip install --quiet --disable-pip-version-check \
        "trl==1.16.0" "torch==2.15.0" "peft==0.21.2" >&2
fi
cd "$venv/bin" && pwd
