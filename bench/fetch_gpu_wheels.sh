#!/usr/bin/env bash
# Download (here, where pip reaches PyPI) the wheels that bench/gpu.sh needs on a CUDA machine whose
# python3 already has torch, torchvision, numpy, scipy, scikit-learn, matplotlib, h5py, click, tqdm.
# They land in .whl/ (ignored by git); the device call then carries .whl.
set -euo pipefail
cd "$(dirname "$0")/.."
mkdir -p .whl
plat=(--platform manylinux_2_28_x86_64 --platform manylinux_2_27_x86_64 --platform manylinux_2_17_x86_64
      --platform manylinux2014_x86_64 --platform manylinux1_x86_64 --platform any)
python3 -m pip download --quiet --no-deps --only-binary=:all: --python-version 3.12 --implementation cp "${plat[@]}" -d .whl \
  zarr==3.1.6 numcodecs==0.16.6 donfig==0.8.1.post1 google-crc32c==1.9.0 typing_extensions==4.16.0 packaging==26.4 \
  kcorrect==5.1.9 astropy==8.0.2 pyerfa==2.0.1.5 astropy-iers-data==0.2026.11.2.0.34.55 PyYAML==6.0.4
ls -la .whl
