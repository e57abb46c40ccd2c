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
.venv/bin/python -m pip install --quiet -e ".[dev,openvino]" "torch==2.13.0"
# nnunetv2 -> dynamic-network-architectures -> timm pulls PyPI's torchvision, which has no CPU build for
# this torch and fails on import ("operator torchvision::nms does not exist"), breaking torchmetrics and
# MONAI's optional imports. Nothing here needs it (SegUncertainty's nnU-Net trainer lookup skips the
# timm-based trainers), so remove it when it cannot be imported.
if ! .venv/bin/python -c "import torchvision" >/dev/null 2>&1; then
    .venv/bin/python -m pip uninstall --quiet -y torchvision
fi
# Debian packages, as root with apt (elsewhere: a note; the tests that need them say so when skipped).
APT_UPDATED=""
apt_install() {  # apt_install PACKAGE WHY: install PACKAGE unless present, updating the lists once
    if dpkg -s "$1" >/dev/null 2>&1; then return 0; fi
    if command -v apt-get >/dev/null && [ "$(id -u)" = 0 ]; then
        [ -n "$APT_UPDATED" ] || { apt-get update -qq >/dev/null 2>&1 || true; APT_UPDATED=1; }
        DEBIAN_FRONTEND=noninteractive apt-get install -y -qq "$1" >/dev/null 2>&1 && return 0
    fi
    echo "note: $1 not installed ($2)"
}
# Colin27 + macaque templates: only to retrain or re-evaluate the bundled model
apt_install mricron-data "only needed to retrain or re-evaluate the bundled model"
# headless Chromium: the worklist page's sorting is tested in a real browser
apt_install chromium "the worklist.html browser test is skipped without it"
# dciodvfy: the DICOM output tests check every object with it
apt_install dicom3tools "the DICOM conformance test is skipped without dciodvfy"
# a real Orthanc with DICOMweb: the PACS round-trip tests (Testing/cohort/test_pacs.py) start one
apt_install orthanc "the PACS tests are skipped without Orthanc"
apt_install orthanc-dicomweb "the PACS tests are skipped without Orthanc's DICOMweb plugin"
.venv/bin/seguncertainty models --verify
