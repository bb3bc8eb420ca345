#!/usr/bin/env bash
# One prepared GPU benchmark (<= 8 minutes on one H100): extraction with both encoders and K=4
# image variants on a mock survey, printing pairs/s and GPU memory.
# Here first: bash bench/fetch_gpu_wheels.sh ; then on the device (carry .whl):
#   bash bench/gpu.sh
set -euo pipefail
cd "$(dirname "$0")/.."
if [ -d .whl ]; then
  python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target /tmp/site .whl/*.whl
  export PYTHONPATH=/tmp/site:$PWD/src
else
  export PYTHONPATH=$PWD/src
fi
export PYTHONUNBUFFERED=1
OUT=${OUT:-bench/out}
mkdir -p "$OUT"
nvidia-smi --query-gpu=name,memory.total --format=csv,noheader || true
python3 -c "import torch; print('torch', torch.__version__, 'cuda', torch.cuda.is_available())"
PAIRS=${PAIRS:-16384}
timeout 420 python3 bench/extract.py --pairs "$PAIRS" --batch-size 512 --variants 4 --device cuda --out "$OUT/extract_gpu.json"
