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


def _imports(stderr: str) -> dict[str, int]:
    """``-X importtime`` lines ("import time: self_us | cumulative_us | name") -> name: cumulative us; a refused
    import is listed too, at a few microseconds (importing pytorch-ignite takes about 0.7 s)."""
    cumulative_us = {}
    for line in stderr.splitlines():
        if line.startswith("import time:") and "cumulative" not in line:
            _, total, name = line.split("|")
            cumulative_us[name.strip()] = max(int(total), cumulative_us.get(name.strip(), 0))
    return cumulative_us


def _segment_process(image: Path, out: Path, *args: str, env: dict | None = None) -> subprocess.CompletedProcess:
    env = {**{k: v for k, v in os.environ.items() if k != "PYTHONUNBUFFERED"}, "PYTHONWARNINGS": "ignore",
           **(env or {})}
    return subprocess.run([sys.executable, "-X", "importtime", "-m", "SegUncertaintyLib.cli", "segment", str(image),
                           "--out", str(out), "--progress", "none", *args],
                          capture_output=True, text=True, timeout=300, env=env)


def test_process_entry_imports_only_what_a_card_run_needs_and_flushes_before_exiting(tmp_path):
    image, out = tmp_path / "phantom.nii.gz", tmp_path / "out"
    sitk.WriteImage(sphere_phantom(), str(image))
    # the bundled MONAI network on torch: MONAI is imported, so its optional imports must be refused
    done = _segment_process(image, out, "--model", "brainmask-t1", "--method", "softmax")
    assert done.returncode == 0, done.stderr[-2000:]
    # stdout is a pipe (block-buffered): the summary arrives only if it was flushed before os._exit
    assert done.stdout.startswith(f"Wrote {out}") and "phantom" not in done.stderr.split("import time")[-1]
    cumulative_us = _imports(done.stderr)
    assert "monai.networks.nets" in cumulative_us
    skipped = {name: us for name, us in cumulative_us.items() if name.split(".")[0] in cli.segment.UNUSED_BY_CARD_RUNS}
    # refused: a few microseconds each on a quiet machine, well under 0.1 s on a loaded one; imported, ignite
    # alone takes about 0.7 s and scikit-image 0.26 s
    assert sum(skipped.values()) < 100_000, skipped
    listed = {e["file"] for e in json.loads((out / "manifest.json").read_text())["outputs"]}
    assert listed | {"manifest.json"} == {p.name for p in out.iterdir()}
    assert sitk.ReadImage(str(out / "overview.png")).GetSize()[0] > 0


def test_a_run_on_a_cached_exported_graph_never_imports_monai_and_gives_the_same_maps(tmp_path):
    """Issue 23 item 5: a run on ONNX Runtime whose graph, probe and load-time checks are cached builds no torch
    network, so MONAI (about 1.7 s of imports) is never imported; the maps equal the first run's."""
    image = tmp_path / "phantom.nii.gz"
    sitk.WriteImage(sphere_phantom(), str(image))
    # a fixed thread count: the cached probe is keyed on it, and a free-cores count could differ between runs
    home = {"SEGUNCERTAINTY_HOME": str(tmp_path / "home"), "OMP_NUM_THREADS": "1"}
    args = ("--model", "brainmask-t1", "--method", "mc_dropout", "--samples", "3", "--backend", "onnxruntime",
            "--no-overview")
    first = _segment_process(image, tmp_path / "first", *args, env=home)  # exports the graph, runs the checks
    assert first.returncode == 0, first.stderr[-2000:]
    assert "monai.networks.nets" in _imports(first.stderr)
    again = _segment_process(image, tmp_path / "again", *args, env=home)
    assert again.returncode == 0, again.stderr[-2000:]
    imported = _imports(again.stderr)
    packages = {name.split(".")[0] for name in imported}
    assert "onnxruntime" in packages and "monai" not in packages, (sorted(packages), again.stderr[-3000:])
    manifest = json.loads((tmp_path / "again" / "manifest.json").read_text())
    assert manifest["inference"]["backend"] == "onnxruntime" and manifest["inference"]["chosen_by"] == "requested"
    for name in ("entropy.nrrd", "mutual_information.nrrd", "segmentation.nrrd"):
        same = [sitk.GetArrayFromImage(sitk.ReadImage(str(tmp_path / run / name))) for run in ("first", "again")]
        np.testing.assert_array_equal(*same)
