#!/usr/bin/env bash
# Generation speed of srlm against llama.cpp on the same GGUF, back to back: the figures of
# README's "Generation speed" table and of issue 2's closing note.
#
#   scripts/bench_vs_llama_cpp.sh [THREADS]
#
# llama.cpp comes from PyPI's llama-cpp-python 0.3.36 sdist (its vendored llama.cpp), built
# once with cmake and ninja from PyPI in a virtual environment, under
# ${SRLM_LLAMA_CPP_DIR:-target/llama-cpp} (about 10 minutes on 2 cores). The model is srlm's
# default (SmolLM2-135M-Instruct Q4_1), fetched by `srlm fetch`; llama.cpp also runs it
# requantized to Q8_0 (`llama-quantize --allow-requantize`), its fastest form on AVX-512 CPUs.
# srlm runs `--weights mixed` and `--weights mixed-bf16` (the same as mixed where the CPU has
# no bf16 kernel). The CPU is printed first: a figure says nothing about another CPU.
set -euo pipefail
threads="${1:-2}"
root="$(cd "$(dirname "$0")/.." && pwd)"
dir="${SRLM_LLAMA_CPP_DIR:-$root/target/llama-cpp}"
src="$dir/llama_cpp_python-0.3.36/vendor/llama.cpp"
bin="$src/build/bin"
if [ ! -x "$bin/llama-batched-bench" ]; then
    mkdir -p "$dir"
    python3 -m venv "$dir/venv"
    "$dir/venv/bin/python" -m pip install --quiet --disable-pip-version-check cmake ninja
    "$dir/venv/bin/python" -m pip download --quiet --no-deps --no-binary llama-cpp-python \
        llama-cpp-python==0.3.36 -d "$dir"
    tar -xzf "$dir/llama_cpp_python-0.3.36.tar.gz" -C "$dir"
    "$dir/venv/bin/cmake" -S "$src" -B "$src/build" -G Ninja \
        -DCMAKE_MAKE_PROGRAM="$dir/venv/bin/ninja" -DCMAKE_BUILD_TYPE=Release \
        -DGGML_NATIVE=ON -DLLAMA_CURL=OFF
    "$dir/venv/bin/cmake" --build "$src/build" --target llama-bench llama-batched-bench llama-quantize
fi
[ -x "$bin/llama-quantize" ] ||
    "$dir/venv/bin/cmake" --build "$src/build" --target llama-quantize
cd "$root"
cargo build --release --quiet
model="$(target/release/srlm fetch)"
q8="$dir/SmolLM2-135M-Instruct.Q8_0.gguf"
[ -f "$q8" ] || "$bin/llama-quantize" --allow-requantize "$model" "$q8" Q8_0 >/dev/null 2>&1
lscpu | grep "Model name"
for weights in mixed mixed-bf16; do
    echo "== srlm bench generate --threads $threads --weights $weights (best of 3)"
    target/release/srlm bench generate --threads "$threads" --weights "$weights" |
        grep -E "^(cpu|kernels|prefill|decode|peak)"
done
for file in "$model" "$q8"; do
    echo "== $(basename "$file"): llama-bench -p 512 -n 128"
    "$bin/llama-bench" -m "$file" -t "$threads" -p 512 -n 128 | grep -E "pp512|tg128"
    echo "== $(basename "$file"): llama-batched-bench -npp 16 -ntg 128 -npl 1,16"
    "$bin/llama-batched-bench" -m "$file" -t "$threads" -c 4096 -npp 16 -ntg 128 -npl 1,16 \
        2>/dev/null | grep -E "^\|"
done
