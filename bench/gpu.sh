#!/usr/bin/env bash
# One prepared GPU benchmark (<= 9 minutes on one H100): the encoders' GPU settings (fp32, channels-last, bf16
# autocast, torch.compile, CUDA graphs; batch by memory) as pairs/s with K=4 against the >= 10k goal; extraction
# with both encoders and K=4 image variants on a mock survey (pairs/s, GPU memory); then head training: 80 epochs
# over 178k pairs of cached features (goal <= 10 s), a training step's FLOP rate and a 16-config sweep.
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
timeout 150 python3 bench/gpu_settings.py --variants 4 --out "$OUT/gpu_settings.json" || echo "GPU settings FAILED"
timeout 240 python3 bench/extract.py --pairs "$PAIRS" --batch-size 512 --variants 4 --device cuda --out "$OUT/extract_gpu.json"
timeout 200 python3 bench/heads.py --pairs 178000 --parts 2,3,4 --train-epochs 80 --configs 16 --sweep-epochs 5 \
  --device cuda --out "$OUT/heads_gpu.json"
timeout 90 python3 bench/faiss_gpu_check.py --out "$OUT/faiss_gpu.json" || echo "faiss-gpu check FAILED"
