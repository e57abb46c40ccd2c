#!/usr/bin/env bash
# Set up SegUncertainty on a fresh machine: a virtual environment in .venv with the CPU build of
# torch that lies on this machine's disk, MONAI, SimpleITK and the package itself (editable, with the
# test extras). Safe to run again. Usage: bash install.sh
set -euo pipefail
cd "$(dirname "$0")"
PY="${PYTHON:-python3}"
if [ ! -x .venv/bin/python ]; then
    "$PY" -m venv .venv
fi
.venv/bin/python -m pip install --quiet --upgrade pip
# torch first, pinned, so that nothing else pulls a multi-GB CUDA build.
.venv/bin/python -m pip install --quiet "torch==2.13.0"
# torch named again so that nothing in the extras (nnunetv2 -> timm -> torchvision) upgrades it.
.venv/bin/python -m pip install --quiet -e ".[dev]" "torch==2.13.0"
# nnunetv2 -> dynamic-network-architectures -> timm pulls PyPI's torchvision, which has no CPU build for
# this torch and fails on import ("operator torchvision::nms does not exist"), breaking torchmetrics and
# MONAI's optional imports. Nothing here needs it (SegUncertainty's nnU-Net trainer lookup skips the
# timm-based trainers), so remove it when it cannot be imported.
if ! .venv/bin/python -c "import torchvision" >/dev/null 2>&1; then
    .venv/bin/python -m pip uninstall --quiet -y torchvision
fi
# Optional data for training and evaluating the bundled model (Colin27 + macaque templates, Debian).
if [ ! -d /usr/share/mricron/templates ] && command -v apt-get >/dev/null && [ "$(id -u)" = 0 ]; then
    apt-get install -y -qq mricron-data >/dev/null 2>&1 \
        || echo "note: mricron-data not installed (only needed to retrain or re-evaluate the bundled model)"
fi
# dciodvfy (Debian dicom3tools): the DICOM output tests check every object with it.
if ! command -v dciodvfy >/dev/null && command -v apt-get >/dev/null && [ "$(id -u)" = 0 ]; then
    apt-get install -y -qq dicom3tools >/dev/null 2>&1 \
        || echo "note: dicom3tools not installed (the DICOM conformance tests skip without dciodvfy)"
fi
.venv/bin/seguncertainty models --verify
