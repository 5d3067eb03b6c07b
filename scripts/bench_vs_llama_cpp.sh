#!/usr/bin/env bash
# Generation speed of srlm against llama.cpp on the same GGUF, back to back: the figures of
# README's "Generation speed" table and of issue 2's closing note.
#
#   scripts/bench_vs_llama_cpp.sh [THREADS]
#
# llama.cpp comes from PyPI's llama-cpp-python 0.3.36 sdist (its vendored llama.cpp), built
# once with cmake and ninja from PyPI in a virtual environment, under
# ${SRLM_LLAMA_CPP_DIR:-target/llama-cpp} (about 10 minutes on 2 cores). The model is srlm's
# default (SmolLM2-135M-Instruct Q4_1), fetched by `srlm fetch`.
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
    "$dir/venv/bin/python" -m pip download --quiet --no-deps --no-binary :all: \
        llama-cpp-python==0.3.36 -d "$dir"
    tar -xzf "$dir/llama_cpp_python-0.3.36.tar.gz" -C "$dir"
    "$dir/venv/bin/cmake" -S "$src" -B "$src/build" -G Ninja \
        -DCMAKE_MAKE_PROGRAM="$dir/venv/bin/ninja" -DCMAKE_BUILD_TYPE=Release \
        -DGGML_NATIVE=ON -DLLAMA_CURL=OFF
    "$dir/venv/bin/cmake" --build "$src/build" --target llama-bench llama-batched-bench
fi
cd "$root"
cargo build --release --quiet
model="$(target/release/srlm fetch)"
echo "== srlm bench generate --threads $threads (best of 3)"
target/release/srlm bench generate --threads "$threads" | grep -E "prefill|decode"
echo "== llama-bench -p 512 -n 128"
"$bin/llama-bench" -m "$model" -t "$threads" -p 512 -n 128 | grep -E "pp512|tg128"
echo "== llama-batched-bench -npp 16 -ntg 128 -npl 1,16"
"$bin/llama-batched-bench" -m "$model" -t "$threads" -c 4096 -npp 16 -ntg 128 -npl 1,16 \
    2>/dev/null | grep -E "^\|"
