"""What makes a run faster without changing its results: uncompressed volumes (--no-compress) and the
command line's process entry (only the imports a card-model run needs, no interpreter teardown)."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import SimpleITK as sitk

from SegUncertaintyLib import cli
from Testing.support.phantoms import sphere_phantom


def _nrrd_encoding(path: Path) -> str:
    header = path.read_bytes().split(b"\n\n", 1)[0].decode()
    return next(line.split(":", 1)[1].strip() for line in header.splitlines() if line.startswith("encoding:"))


def test_no_compress_writes_the_same_volumes_raw(tmp_path, threshold_model):
    image = tmp_path / "phantom.nii.gz"
    sitk.WriteImage(sphere_phantom(noise=0.05), str(image))
    runs = {}
    for flag in ("--compress", "--no-compress"):
        out = tmp_path / flag
        assert cli.main(["segment", str(image), "--model", str(threshold_model), "--samples", "3", "--out", str(out),
                         "--progress", "none", "--no-overview", flag]) == 0
        runs[flag] = out
    manifest = json.loads((runs["--no-compress"] / "manifest.json").read_text())
    assert manifest["settings"]["compress"] is False
    assert "compress" not in json.loads((runs["--compress"] / "manifest.json").read_text())["settings"]
    volumes = [e["file"] for e in manifest["outputs"] if e["file"].endswith(".nrrd")]
    assert "entropy.nrrd" in volumes and "segmentation.nrrd" in volumes
    for name in volumes:
        assert _nrrd_encoding(runs["--compress"] / name) == "gzip"
        assert _nrrd_encoding(runs["--no-compress"] / name) == "raw"
        same = [sitk.GetArrayFromImage(sitk.ReadImage(str(runs[f] / name))) for f in runs]
        np.testing.assert_array_equal(*same)
