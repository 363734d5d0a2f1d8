#!/usr/bin/env bash
# The wheels the GPU suite (python -m pipelines.benchmark_gpu) needs beyond a bare PyTorch GPU
# image (torch, torchvision, numpy, pillow, pyyaml, tqdm), for a machine without network.
#
#   tools/gpu_wheels.sh [DIR]          # default DIR: .whl/gpu (git-ignored; carry it to the device)
#   PYTHON_VERSION=3.10 tools/gpu_wheels.sh   # the device's Python, when it differs from this one
#
# Downloads each wheel with `pip download --no-deps` (binary wheels for manylinux x86_64 and the
# given CPython), lists their sizes and refuses a total over 60 MB. On the device:
#   pip install --no-deps --no-index .whl/gpu/*.whl
# (see docs/gpu_suite.md). Versions are those the suite was tested with (pyproject's ranges).
set -euo pipefail

DIR="${1:-.whl/gpu}"
PYTHON="${PYTHON:-python3}"
PYTHON_VERSION="${PYTHON_VERSION:-$("$PYTHON" -c 'import sys; print(f"{sys.version_info[0]}.{sys.version_info[1]}")')}"
LIMIT_MB=60
# segment-anything: SAM; open_clip_torch + ftfy (+ wcwidth) + regex: CLIP and its tokenizer;
# timm: open_clip's ConvNeXt towers (skip with WITH_TIMM=0 when the image has it);
# scipy: Hungarian matching and post-processing; pycocotools: RLE masks; safetensors: weight files.
PACKAGES=(
  "segment-anything==1.0"
  "open_clip_torch==3.3.0"
  "ftfy==6.3.1"
  "wcwidth==0.9.5"
  "regex==2026.12.2"
  "pycocotools==2.0.11"
  "safetensors==0.8.0"
  "scipy==1.17.1"
)
if [[ "${WITH_TIMM:-1}" == "1" ]]; then PACKAGES+=("timm==1.0.31"); fi

mkdir -p "$DIR"
"$PYTHON" -m pip download --no-deps --only-binary=:all: --implementation cp --python-version "$PYTHON_VERSION" \
  --platform manylinux2014_x86_64 --platform manylinux_2_17_x86_64 --platform manylinux_2_27_x86_64 --platform manylinux_2_28_x86_64 \
  --dest "$DIR" "${PACKAGES[@]}"

echo "wheels for CPython $PYTHON_VERSION in $DIR:"
total=0
for wheel in "$DIR"/*.whl; do
  size=$(stat -c %s "$wheel")
  total=$((total + size))
  printf "  %8.2f MB  %s\n" "$(echo "$size / 1048576" | bc -l)" "$(basename "$wheel")"
done
printf "  %8.2f MB  total (limit %d MB)\n" "$(echo "$total / 1048576" | bc -l)" "$LIMIT_MB"
if (( total > LIMIT_MB * 1048576 )); then
  echo "error: the wheels exceed $LIMIT_MB MB" >&2
  exit 1
fi
