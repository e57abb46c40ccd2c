"""What makes a run faster without changing its results: uncompressed float maps (the default) and the
command line's process entry (only the imports a card-model run needs, no interpreter teardown)."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import SimpleITK as sitk

from SegUncertaintyLib import cli
from Testing.support.phantoms import sphere_phantom


def _nrrd_encoding(path: Path) -> str:
    header = path.read_bytes().split(b"\n\n", 1)[0].decode()
    return next(line.split(":", 1)[1].strip() for line in header.splitlines() if line.startswith("encoding:"))


def test_compress_choices_write_the_same_volumes_gzipped_as_chosen(tmp_path, threshold_model):
    """Default: the labelmap and float16 maps gzipped, float32 maps raw; --compress all; --no-compress none."""
    image = tmp_path / "phantom.nii.gz"
    sitk.WriteImage(sphere_phantom(noise=0.05), str(image))
    runs = {}
    for flags in ((), ("--compress",), ("--no-compress",), ("--map-dtype", "float16")):
        out = tmp_path / ("_".join(flags) or "default")
        assert cli.main(["segment", str(image), "--model", str(threshold_model), "--samples", "3", "--out", str(out),
                         "--progress", "none", "--no-overview", *flags]) == 0
        runs[flags] = out
    settings = {flags: json.loads((out / "manifest.json").read_text())["settings"] for flags, out in runs.items()}
    assert "compress" not in settings[()] and settings[("--no-compress",)]["compress"] is False
    assert settings[("--compress",)]["compress"] is True
    manifest = json.loads((runs[()] / "manifest.json").read_text())
    volumes = {e["file"]: e["kind"] for e in manifest["outputs"] if e["file"].endswith(".nrrd")}
    assert volumes["entropy.nrrd"] == "uncertainty" and volumes["segmentation.nrrd"] == "labelmap"
    for name, kind in volumes.items():
        expected = {(): "gzip" if kind == "labelmap" else "raw", ("--compress",): "gzip", ("--no-compress",): "raw",
                    ("--map-dtype", "float16"): "gzip"}
        for flags, encoding in expected.items():
            assert _nrrd_encoding(runs[flags] / name) == encoding, (name, flags)
        same = [sitk.GetArrayFromImage(sitk.ReadImage(str(runs[f] / name))) for f in runs if "float16" not in f]
        for other in same[1:]:
            np.testing.assert_array_equal(same[0], other)


def test_process_entry_imports_only_what_a_card_run_needs_and_flushes_before_exiting(tmp_path, threshold_model):
    image, out = tmp_path / "phantom.nii.gz", tmp_path / "out"
    sitk.WriteImage(sphere_phantom(), str(image))
    env = {**{k: v for k, v in os.environ.items() if k != "PYTHONUNBUFFERED"}, "PYTHONWARNINGS": "ignore"}
    done = subprocess.run([sys.executable, "-X", "importtime", "-m", "SegUncertaintyLib.cli", "segment", str(image),
                           "--model", str(threshold_model), "--samples", "3", "--out", str(out), "--progress", "none"],
                          capture_output=True, text=True, timeout=300, env=env)
    assert done.returncode == 0, done.stderr[-2000:]
    # stdout is a pipe (block-buffered): the summary arrives only if it was flushed before os._exit
    assert done.stdout.startswith(f"Wrote {out}") and "phantom" not in done.stderr.split("import time")[-1]
    # -X importtime lines: "import time: self_us | cumulative_us | name"; a refused import is listed too, at a
    # few microseconds (importing pytorch-ignite takes about 0.7 s)
    cumulative_us = {}
    for line in done.stderr.splitlines():
        if line.startswith("import time:") and "cumulative" not in line:
            _, total, name = line.split("|")
            cumulative_us[name.strip()] = max(int(total), cumulative_us.get(name.strip(), 0))
    assert "monai.networks.nets" in cumulative_us
    skipped = {name: us for name, us in cumulative_us.items() if name.split(".")[0] in cli.segment.UNUSED_BY_CARD_RUNS}
    # refused: a few microseconds each on a quiet machine, well under 0.1 s on a loaded one; imported, ignite
    # alone takes about 0.7 s and scikit-image 0.26 s
    assert sum(skipped.values()) < 100_000, skipped
    listed = {e["file"] for e in json.loads((out / "manifest.json").read_text())["outputs"]}
    assert listed | {"manifest.json"} == {p.name for p in out.iterdir()}
    assert sitk.ReadImage(str(out / "overview.png")).GetSize()[0] > 0
