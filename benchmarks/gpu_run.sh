#!/usr/bin/env bash
# The command for the NVIDIA H200 device machine (one call: `run` with carry [".whl"], timeout_s 590):
#     bash benchmarks/gpu_run.sh              # inference and folding (gpu_h200.py)
#     bash benchmarks/gpu_run.sh train        # LoRA fine-tuning (gpu_train.py; .whl/ must hold peft too)
# The machine's image has torch, transformers and jax (CUDA) but no keras: keras, namex and optree travel as wheels
# in .whl/ (benchmarks/RESULTS.md, "GPU: ready, not run", says how to download them). Results: the table at the
# end of the output, full JSON and the table in $OUT.
set -o pipefail
python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target /tmp/site .whl/*.whl \
    || exit 1
export PYTHONPATH=/tmp/site:$PWD
nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv,noheader || true
KERAS_BACKEND=jax python3 -c "import jax, keras, torch, transformers; print('jax', jax.__version__, jax.devices(), 'keras', keras.__version__, 'torch', torch.__version__, 'transformers', transformers.__version__)"
if [ "${1:-}" = train ]; then  # `bash benchmarks/gpu_run.sh train [options]`: LoRA fine-tuning (needs peft's wheel)
    shift
    KERAS_BACKEND=jax PYTHONUNBUFFERED=1 timeout "${BUDGET_SECONDS:-540}" python3 benchmarks/gpu_train.py "$@" \
        2>&1 | tee "${OUT:-/tmp}/gpu_train.log"
    exit
fi
KERAS_BACKEND=jax PYTHONUNBUFFERED=1 python3 benchmarks/gpu_h200.py --budget-seconds "${BUDGET_SECONDS:-540}" "$@" \
    2>&1 | tee "${OUT:-/tmp}/gpu_h200.log"
