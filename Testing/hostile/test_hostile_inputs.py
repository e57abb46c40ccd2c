"""Hostile or broken images, DICOM folders and evaluate inputs through the command line: each gives its exit
code and one line `seguncertainty: error: ...` naming the problem on stderr (no traceback, no ITK warning),
and writes or changes no file."""

from __future__ import annotations

import hashlib
import json
import re
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import SimpleITK as sitk

from SegUncertaintyLib import cli
from Testing.io.test_image_headers import SHEAR, mha_header, nifti, nrrd_header
from Testing.support.dicom_series import volume, write_series
from Testing.support.phantoms import sphere_phantom

FLIP = (-1.0, 0, 0, 0, -1.0, 0, 0, 0, 1.0)


def image_file(tmp: Path, name: str, image: sitk.Image | None = None) -> Path:
    path = tmp / name
    sitk.WriteImage(sphere_phantom(size=(20, 18, 16)) if image is None else image, str(path))
    return path


def sheared(tmp: Path, suffix: str) -> Path:
    if suffix == ".nii.gz":
        return nifti(tmp / "sheared.nii.gz", np.array([[2, 0.6, 0, -10], [0, 2, 0, -20], [0, 0, 3, 5], [0, 0, 0, 1.0]]))
    image = sphere_phantom(size=(20, 18, 16))
    image.SetDirection(SHEAR)
    return image_file(tmp, f"sheared{suffix}", image)


def with_voxel(value) -> sitk.Image:
    image = sphere_phantom(size=(20, 18, 16))
    array = sitk.GetArrayFromImage(image)
    array[4, 5, 6] = value
    out = sitk.GetImageFromArray(array)
    out.CopyInformation(image)
    return out


def garbage(path: Path) -> Path:
    path.write_bytes(b"junk" * 50)
    return path


def truncated(tmp: Path, name: str) -> Path:
    path = image_file(tmp, name)
    path.write_bytes(path.read_bytes()[: path.stat().st_size // 2])
    return path


def dicom(tmp: Path, kind: str) -> Path:
    folder, array = tmp / "dicom", volume()
    if kind == "two":
        write_series(folder, array, "1.2.3.1", "T1", prefix="A")
        write_series(folder, array, "1.2.3.2", "T2", prefix="B")
    elif kind == "gap":
        write_series(folder / "PAT" / "STUDY" / "SER", array, "1.2.3.1", skip={2})
    elif kind == "duplicate":
        write_series(folder, array, "1.2.3.1", positions=[(0, 0, 2 * min(k, 3)) for k in range(6)])
    elif kind == "tilt":
        write_series(folder, array, "1.2.3.1", positions=[(0, 0.8 * k, 2 * k) for k in range(6)])
    elif kind == "nonuniform":
        write_series(folder, array, "1.2.3.1", positions=[(0, 0, z) for z in (0, 2, 4, 6.6, 8.6, 10.6)])
    else:
        files = write_series(folder, array, "1.2.3.1")
        files[3].write_bytes(files[3].read_bytes()[:-30] if kind == "truncated" else b"\0" * 128 + b"DICM garbage")
    return folder


def segment(path_or_args) -> list[str]:
    args = path_or_args if isinstance(path_or_args, list) else [str(path_or_args)]
    return ["segment", *args]


def evaluation(tmp: Path, reference: sitk.Image | None = None, *, ref_file: str = "case0.nrrd",
               mask: sitk.Image | None = None, raters: list[sitk.Image] | None = None,
               corrupt_reference: bool = False) -> list[str]:
    """A plain case folder (segmentation.nrrd of a sphere) and REFS holding ``reference`` (or raters)."""
    segmentation = sitk.Cast(sphere_phantom(size=(20, 18, 16)) > 0.5, sitk.sitkUInt8)
    preds, refs = tmp / "preds" / "method", tmp / "refs"
    (preds / "case0").mkdir(parents=True)
    refs.mkdir()
    sitk.WriteImage(segmentation, str(preds / "case0" / "segmentation.nrrd"))
    if raters is not None:
        (refs / "case0").mkdir()
        for i, rater in enumerate(raters):
            sitk.WriteImage(rater, str(refs / "case0" / f"rater{i}.nrrd"))
    elif reference is not None:
        sitk.WriteImage(reference, str(refs / ref_file))
    if corrupt_reference:
        (refs / ref_file).write_bytes(b"NRRD0004\ntype: uchar\ndimension: 3\nsizes: 20 18 16\nencoding: raw\n\n\1\2")
    argv = ["evaluate", str(preds), "--references", str(refs), "--out", str(tmp / "report"), "--labels", "1=sphere"]
    if mask is not None:
        (tmp / "masks").mkdir()
        sitk.WriteImage(mask, str(tmp / "masks" / "case0.nrrd"))
        argv += ["--masks", str(tmp / "masks")]
    return argv


def evaluation_with(tmp: Path, *extra: str, manifest: str | None = None, scores: str | None = None,
                    ood: str | None = None, masks: bool = False, user_file: bool = False) -> list[str]:
    """evaluation() of an aligned reference with one thing broken: the case's manifest.json or scores.json
    (raw text), an --ood file (its text; "" for a missing file), an empty --masks folder, a user's file in
    --out, or ``extra`` arguments (the last of a repeated option wins)."""
    argv = [*evaluation(tmp, reference()), *extra]
    case = tmp / "preds" / "method" / "case0"
    if manifest is not None:
        (case / "manifest.json").write_text(manifest)
    if scores is not None:
        (case / "scores.json").write_text(scores)
    if ood is not None:
        if ood:
            (tmp / "ood.txt").write_text(ood)
        argv += ["--ood", str(tmp / "ood.txt")]
    if masks:
        (tmp / "masks").mkdir()
        argv += ["--masks", str(tmp / "masks")]
    if user_file:
        (tmp / "mine").mkdir()
        (tmp / "mine" / "notes.txt").write_text("my notes")
        argv += ["--out", str(tmp / "mine")]
    return argv


def case_manifest(**change) -> str:
    manifest = {"tool": "seguncertainty 0.1", "labels": {"0": "background", "1": "sphere"},
                "outputs": [{"file": "segmentation.nrrd", "kind": "labelmap"}]}
    return json.dumps(manifest | change)


def moved(image: sitk.Image, shift=(30.0, 0, 0), direction=FLIP) -> sitk.Image:
    out = sitk.Image(image)
    out.SetOrigin(tuple(np.add(image.GetOrigin(), shift)))
    out.SetDirection(direction)
    return out


def reference(**change) -> sitk.Image:
    image = sitk.Cast(sphere_phantom(size=change.pop("size", (20, 18, 16))) > 0.5, sitk.sitkUInt8)
    if "spacing" in change:
        image.SetSpacing(change["spacing"])
    return image


CASES = {
    # images
    "missing file": (lambda t: segment(t / "nope.nii.gz"), 3, "not found"),
    "garbage bytes": (lambda t: segment(garbage(t / "x.nrrd")), 3, "Cannot read"),
    "truncated nii.gz": (lambda t: segment(truncated(t, "cut.nii.gz")), 3, "truncated"),
    "truncated nrrd": (lambda t: segment(truncated(t, "cut.nrrd")), 3, "Cannot read"),
    "1 KB NRRD claiming 1200^3 floats": (lambda t: segment(nrrd_header(t / "huge.nrrd")), 3, "more than the limit"),
    "spacing 0": (lambda t: segment(mha_header(t / "a.mha", spacing="0 1 1")), 3, "spacing"),
    "negative spacing": (lambda t: segment(mha_header(t / "a.mha", spacing="1 -1 1")), 3, "spacing"),
    "NaN spacing": (lambda t: segment(mha_header(t / "a.mha", spacing="1 1 nan")), 3, "spacing"),
    "spacing 1e6 mm": (lambda t: segment(nrrd_header(t / "a.nrrd", "10 10 10", "(1e6,0,0) (0,1,0) (0,0,1)")), 3,
                       "spacing"),
    "origin 1e9 mm": (lambda t: segment(mha_header(t / "a.mha", offset="0 1e9 0")), 3, "origin"),
    "sheared nrrd": (lambda t: segment(sheared(t, ".nrrd")), 3, "non-orthonormal"),
    "sheared mha": (lambda t: segment(sheared(t, ".mha")), 3, "non-orthonormal"),
    "sheared nii.gz sform": (lambda t: segment(sheared(t, ".nii.gz")), 3, "non-orthonormal"),
    "2D image": (lambda t: segment(image_file(t, "flat.nrrd", sitk.Image([20, 20], sitk.sitkFloat32) + 1)), 3, "2D"),
    "NaN voxel": (lambda t: segment(image_file(t, "nan.nrrd", with_voxel(np.nan))), 3, "1 NaN or infinite"),
    # ITK's NIfTI reader turns NaN and infinities into 0: the file itself is scanned
    "NaN voxel nii.gz": (lambda t: segment(image_file(t, "nan.nii.gz", with_voxel(np.nan))), 3, "1 NaN or infinite"),
    "infinite voxel nii": (lambda t: segment(image_file(t, "inf.nii", with_voxel(-np.inf))), 3, "1 NaN or infinite"),
    "NaN voxel float64 nii.gz": (lambda t: segment(image_file(t, "nan64.nii.gz", sitk.Cast(with_voxel(np.nan),
                                                                                         sitk.sitkFloat64))), 3,
                                 "1 NaN or infinite"),
    "constant": (lambda t: segment(image_file(t, "c.nrrd", sitk.Image([20, 18, 16], sitk.sitkFloat32))), 3, "constant"),
    "RGB": (lambda t: segment(image_file(t, "rgb.nrrd", sitk.Compose([sphere_phantom(size=(20, 18, 16))] * 3))), 3,
            "components"),
    "--series on a file": (lambda t: segment([str(image_file(t, "a.nrrd")), "--series", "1.2"]), 2, "DICOM folders"),
    # DICOM folders
    "empty folder": (lambda t: segment((t / "empty").mkdir() or t / "empty"), 3, "No DICOM series"),
    "two series, no --series": (lambda t: segment(dicom(t, "two")), 3, "2 DICOM series.*1.2.3.1 'T1'.*1.2.3.2 'T2'"),
    "unknown --series": (lambda t: segment([str(dicom(t, "two")), "--series", "7.7"]), 3, "No DICOM series 7.7"),
    "nested series missing a slice": (lambda t: segment(dicom(t, "gap")), 3, "missing slice"),
    "non-uniform slices": (lambda t: segment(dicom(t, "nonuniform")), 3, "non-uniform"),
    "duplicate slice": (lambda t: segment(dicom(t, "duplicate")), 3, "same position"),
    "gantry tilt": (lambda t: segment(dicom(t, "tilt")), 3, "gantry tilt"),
    "truncated slice": (lambda t: segment(dicom(t, "truncated")), 3, "IM0003.dcm.*truncated or corrupt"),
    "garbage slice with DICM preamble": (lambda t: segment(dicom(t, "garbage")), 3, "IM0003.dcm.*corrupt"),
    # evaluate
    "reference moved 30 mm, axes flipped": (lambda t: evaluation(t, moved(reference())), 3,
                                            "not on the grid.*origin \\(-10, -45, -48\\).*direction \\(-1"),
    "reference moved 30 mm": (lambda t: evaluation(t, moved(reference(), direction=(1, 0, 0, 0, 1, 0, 0, 0, 1))),
                              3, "not on the grid"),
    "reference of another size": (lambda t: evaluation(t, reference(size=(20, 18, 15))), 3, "size 20 x 18 x 15"),
    "reference of another spacing": (lambda t: evaluation(t, reference(spacing=(2.0, 2.5, 3.5))), 3,
                                     "not on the grid"),
    "reference with spacing 1e6": (lambda t: evaluation(t, reference(spacing=(1e6, 2.5, 3.0))), 3, "spacing"),
    "corrupt reference": (lambda t: evaluation(t, corrupt_reference=True), 3, "Cannot read"),
    "missing reference": (lambda t: evaluation(t, None), 3, "could be evaluated: .*no reference"),
    "region mask moved": (lambda t: evaluation(t, reference(), mask=moved(reference())), 3,
                          "Region mask .* not on the grid"),
    "annotators on different grids": (lambda t: evaluation(t, raters=[reference(), moved(reference())]), 3,
                                      "Annotation .* not on the grid"),
    "case manifest.json not JSON": (lambda t: evaluation_with(t, manifest="{truncated"), 3,
                                    "Case manifest .*manifest.json is not valid JSON"),
    "case manifest.json a list": (lambda t: evaluation_with(t, manifest="[1, 2]"), 3, "is not a JSON object"),
    "case manifest without labels": (lambda t: evaluation_with(t, manifest=case_manifest(labels=None)), 3,
                                     "field 'labels'"),
    "case manifest label value not a number": (lambda t: evaluation_with(
        t, manifest=case_manifest(labels={"one": "sphere"})), 3, "field 'labels' has the entry 'one'"),
    "case manifest output outside the case folder": (lambda t: evaluation_with(t, manifest=case_manifest(
        outputs=[{"file": "../../refs/case0.nrrd", "kind": "labelmap"}])), 3, "a file name inside the case folder"),
    "case manifest without a labelmap": (lambda t: evaluation_with(t, manifest=case_manifest(
        outputs=[{"file": "segmentation.nrrd", "kind": "probability", "label": "sphere"}])), 3,
                                         "no output of kind 'labelmap'"),
    "case manifest naming a missing file": (lambda t: evaluation_with(t, manifest=case_manifest(
        outputs=[{"file": "gone.nrrd", "kind": "labelmap"}])), 3, "not found: .*gone.nrrd"),
    "scores.json not JSON": (lambda t: evaluation_with(t, scores="{"), 3, "Scores file .* is not valid JSON"),
    "scores.json with a text score": (lambda t: evaluation_with(t, scores='{"classes": {"sphere": {"cv": "high"}}}'),
                                      3, "'sphere'.'cv' must be a number"),
    "--ood file missing": (lambda t: evaluation_with(t, ood=""), 3, "--ood file not found"),
    "--ood naming unknown cases": (lambda t: evaluation_with(t, ood="case0\ncase9\n"), 2,
                                   "names 1 case\\(s\\) found in no prediction folder: case9"),
    "--labels with the background value": (lambda t: evaluation_with(t, "--labels", "0=bg,1=sphere"), 2,
                                           "--labels expects distinct values from 1"),
    "--labels with a repeated name": (lambda t: evaluation_with(t, "--labels", "1=a,2=a"), 2, "distinct"),
    "--labels with an empty name": (lambda t: evaluation_with(t, "--labels", "1="), 2, "non-empty"),
    "--labels not VALUE=NAME": (lambda t: evaluation_with(t, "--labels", "sphere"), 2, "VALUE=NAME"),
    "--masks folder missing": (lambda t: evaluation_with(t, "--masks", str(t / "nomasks")), 3,
                               "--masks .*nomasks not found"),
    "--masks without the case's mask": (lambda t: evaluation_with(t, masks=True), 3,
                                        "No region mask \\(--masks\\) for case 'case0'"),
    "--references missing": (lambda t: evaluation_with(t, "--references", str(t / "norefs")), 3,
                             "--references .*norefs not found"),
    "prediction folder is a file": (lambda t: ["evaluate", str(t / "refs" / "case0.nrrd"),
                                               *evaluation(t, reference())[1:]], 3, "case0.nrrd is not a folder"),
    "evaluate --out holds a user's file": (lambda t: evaluation_with(t, user_file=True), 5,
                                           "files this tool did not write \\(notes.txt\\)"),
}


def snapshot(folder: Path) -> dict[str, str]:
    return {str(p.relative_to(folder)): hashlib.sha256(p.read_bytes()).hexdigest()
            for p in sorted(folder.rglob("*")) if p.is_file()}


@pytest.mark.parametrize("case", list(CASES))
def test_hostile_input_gives_exit_code_and_one_line(case, tmp_path, threshold_model, capfd):
    build, code, message = CASES[case]
    inputs = tmp_path / "inputs"
    inputs.mkdir()
    argv = build(inputs)
    if argv[0] == "segment":
        argv += ["--model", str(threshold_model), "--out", str(tmp_path / "out"), "--progress", "none"]
    before = snapshot(tmp_path)
    capfd.readouterr()
    try:
        status = cli.main(argv)
    except SystemExit as exc:  # argparse usage errors
        status = exc.code
    err = capfd.readouterr().err
    lines = [line for line in err.splitlines() if line.strip()]
    assert status == code, err
    assert len(lines) == 1, err
    assert lines[0].startswith("seguncertainty: error:")
    assert re.search(message, lines[0]), lines[0]
    assert snapshot(tmp_path) == before  # nothing written, nothing changed
    for folder in (tmp_path / "out", tmp_path / "inputs" / "report"):
        assert not folder.exists() or not any(folder.iterdir())


def test_aligned_reference_still_evaluates(tmp_path):
    """The control for the evaluate cases above: the same reference on the case's grid is scored."""
    argv = evaluation(tmp_path, reference())
    assert cli.main(argv) == 0
    rows = (tmp_path / "report" / "cases.csv").read_text().splitlines()
    assert len(rows) == 2 and ",1.0," in rows[1]  # Dice 1


@pytest.mark.slow
def test_entry_point_prints_one_line_without_traceback(tmp_path):
    """The installed entry point in a fresh interpreter, on a DICOM folder with two series."""
    folder = dicom(tmp_path, "two")
    proc = subprocess.run([sys.executable, "-m", "SegUncertaintyLib.cli", "segment", str(folder), "--out",
                           str(tmp_path / "out"), "--progress", "none"], capture_output=True, text=True, timeout=300)
    assert proc.returncode == 3
    assert proc.stderr.strip().count("\n") == 0 and "--series UID" in proc.stderr and "Traceback" not in proc.stderr
