"""evaluate --out is published like a segmentation run (io.publish): never over a user's file, stale files
of an earlier report removed, one atomic swap, a lock; and every text file is written as UTF-8 whatever
the locale."""

from __future__ import annotations

import ast
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import SimpleITK as sitk

from SegUncertaintyLib import cli
from SegUncertaintyLib.evaluation import report as report_module
from SegUncertaintyLib.evaluation.report import REPORT_MANIFEST, report_files, report_folder
from SegUncertaintyLib.io.publish import PREFIX
from Testing.hostile.test_hostile_inputs import evaluation, reference
from Testing.support.phantoms import sphere_phantom

LIBRARY = Path(__file__).resolve().parents[2] / "SegUncertaintyLib"


def run(argv: list[str], capfd) -> tuple[int, str]:
    capfd.readouterr()
    status = cli.main(argv)
    return status, capfd.readouterr().err


def with_labels(argv: list[str], labels: str) -> list[str]:
    return [*argv[:argv.index("--labels") + 1], labels, *argv[argv.index("--labels") + 2:]]


def listed(folder: Path) -> set[str]:
    return {e["file"] for e in json.loads((folder / REPORT_MANIFEST).read_text())["outputs"]} | {REPORT_MANIFEST}


def test_report_folder_lists_every_file_and_a_rerun_removes_stale_ones(tmp_path, capfd):
    argv = evaluation(tmp_path, reference())
    out = tmp_path / "report"
    assert run(argv, capfd)[0] == 0
    first = {p.name for p in out.iterdir()}
    assert first == listed(out) and "figures_sphere.png" in first
    assert run(with_labels(argv, "1=ball"), capfd)[0] == 0  # another class name: other figure names
    second = {p.name for p in out.iterdir()}
    assert second == listed(out) and "figures_ball.png" in second
    assert not any(name.endswith("sphere.png") for name in second)  # the earlier report's figures are gone
    assert sorted(p.name for p in tmp_path.iterdir() if p.name.startswith(PREFIX)) == []  # no stage, no lock


def test_user_files_in_out_are_never_overwritten(tmp_path, capfd):
    """A user's own report.md in --out: exit 5 before anything is computed, the file untouched; the same
    once an earlier report is there and the user added a file to it."""
    argv = evaluation(tmp_path, reference())
    out = tmp_path / "report"
    out.mkdir()
    (out / "report.md").write_text("my notes")
    status, err = run(argv, capfd)
    assert status == 5 and "files this tool did not write (report.md)" in err
    assert [p.name for p in out.iterdir()] == ["report.md"] and (out / "report.md").read_text() == "my notes"
    (out / "report.md").unlink()
    assert run(argv, capfd)[0] == 0
    (out / "notes.txt").write_text("mine")
    before = {p.name: p.read_bytes() for p in out.iterdir()}
    status, err = run(argv, capfd)
    assert status == 5 and "notes.txt" in err
    assert {p.name: p.read_bytes() for p in out.iterdir()} == before


@pytest.mark.slow
def test_segment_and_evaluate_folders_are_not_interchangeable(tmp_path, capfd, threshold_model):
    """A segmentation run's folder is not an earlier report (another manifest), and the reverse."""
    image = tmp_path / "image.nrrd"
    sitk.WriteImage(sphere_phantom(), str(image))
    segment = ["segment", str(image), "--model", str(threshold_model), "--progress", "none", "--no-overview"]
    assert run([*segment, "--out", str(tmp_path / "run")], capfd)[0] == 0
    argv = evaluation(tmp_path, reference())
    status, err = run([*argv, "--out", str(tmp_path / "run")], capfd)  # the last --out wins
    assert status == 5 and "manifest.json" in err
    assert run(argv, capfd)[0] == 0
    status, err = run([*segment, "--out", str(tmp_path / "report")], capfd)
    assert status == 5 and "report.md" in err


def test_failure_while_writing_keeps_the_earlier_report(tmp_path, capfd, monkeypatch):
    argv = evaluation(tmp_path, reference())
    out = tmp_path / "report"
    assert run(argv, capfd)[0] == 0
    before = {p.name: p.read_bytes() for p in out.iterdir()}

    def broken(*args, **kwargs):
        raise OSError(28, "No space left on device")

    monkeypatch.setattr(report_module, "_figures", broken)
    status, err = run(argv, capfd)
    assert status == 1 and "No space left" in err
    assert {p.name: p.read_bytes() for p in out.iterdir()} == before
    assert not [p for p in tmp_path.iterdir() if p.name.startswith(PREFIX)]


def test_a_second_evaluate_into_the_same_out_is_refused(tmp_path, capfd):
    argv = evaluation(tmp_path, reference())
    with report_folder(tmp_path / "report"):
        status, err = run(argv, capfd)
    assert status == 5 and f"Another seguncertainty run (pid {os.getpid()})" in err
    assert not (tmp_path / "report").exists()


def test_class_names_never_leave_the_report_folder(tmp_path, capfd):
    """Class names come from manifests and --labels: '../x' must not place a figure outside --out."""
    argv = with_labels(evaluation(tmp_path, reference()), "1=../../escaped")
    assert run(argv, capfd)[0] == 0
    out = tmp_path / "report"
    assert {p.name for p in out.iterdir()} == listed(out) and "figures_escaped.png" in listed(out)
    assert {p.parent for p in tmp_path.parent.rglob("*escaped*")} == {out}
    assert report_files(out) == listed(out)


@pytest.mark.slow
def test_report_is_written_as_utf8_under_an_ascii_locale(tmp_path):
    """LC_ALL=C without Python's UTF-8 mode: the default text encoding is ASCII, and report.md (GED², a
    non-ASCII class name) must still be written, as UTF-8."""
    argv = with_labels(evaluation(tmp_path, reference()), "1=Läsion")
    env = {**os.environ, "LC_ALL": "C", "LANG": "C", "PYTHONUTF8": "0", "PYTHONCOERCECLOCALE": "0",
           "PYTHONIOENCODING": "ascii:backslashreplace"}
    code = ("import locale, sys; from SegUncertaintyLib import cli; "
            "assert locale.getpreferredencoding(False).lower() in ('ascii', 'ansi_x3.4-1968'), "
            "locale.getpreferredencoding(False); sys.exit(cli.main(sys.argv[1:]))")
    proc = subprocess.run([sys.executable, "-c", code, *argv], capture_output=True, text=True, env=env,
                          cwd=Path(__file__).parent, timeout=300)
    assert proc.returncode == 0, proc.stderr
    text = (tmp_path / "report" / "report.md").read_text(encoding="utf-8")
    assert "## Läsion" in text and "figures_L_sion.png" in text


def text_io_without_encoding(path: Path) -> list[str]:
    """Calls in ``path`` that read or write text with the locale's encoding: read_text/write_text without
    encoding=, open() in a text mode without encoding=."""
    found = []
    for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
        if not isinstance(node, ast.Call) or any(k.arg == "encoding" for k in node.keywords):
            continue
        name = node.func.attr if isinstance(node.func, ast.Attribute) else getattr(node.func, "id", "")
        if name in ("read_text", "write_text"):
            found.append(f"{path.name}:{node.lineno} {name}")
        elif name == "open" and not (isinstance(node.func, ast.Attribute) and node.func.value.__dict__.get("id")
                                     in ("os", "gzip")):
            mode = node.args[1] if len(node.args) > 1 else next((k.value for k in node.keywords if k.arg == "mode"),
                                                                   None)
            if not (isinstance(mode, ast.Constant) and "b" in str(mode.value)):
                found.append(f"{path.name}:{node.lineno} open")
    return found


def test_every_text_file_the_library_reads_or_writes_names_its_encoding():
    offenders = [hit for path in sorted(LIBRARY.rglob("*.py")) for hit in text_io_without_encoding(path)]
    assert offenders == []


@pytest.mark.parametrize("source, hits", [("Path('a').write_text('x')", 1), ("open('a', 'w')", 1),
                                          ("open('a', 'rb')", 0), ("Path('a').read_text(encoding='utf-8')", 0)])
def test_the_encoding_check_finds_what_it_should(tmp_path, source, hits):
    (tmp_path / "m.py").write_text(source)
    assert len(text_io_without_encoding(tmp_path / "m.py")) == hits


def test_prediction_folders_with_one_base_name_are_reported_apart(tmp_path, capfd):
    """a/method and b/method: two methods in the report (the second used to replace the first); the same
    folder twice is a usage error, not a double count."""
    import shutil

    import SimpleITK as sitk

    argv = evaluation(tmp_path, reference())
    preds = Path(argv[1])
    first, second = tmp_path / "a" / "method", tmp_path / "b" / "method"
    shutil.copytree(preds, first)
    shutil.copytree(preds, second)
    segmentation = second / "case0" / "segmentation.nrrd"
    sitk.WriteImage(sitk.BinaryErode(sitk.ReadImage(str(segmentation)), [2, 2, 2]), str(segmentation))
    status, err = run([argv[0], str(first), str(second), *argv[2:]], capfd)
    assert status == 0, err
    summary = json.loads((tmp_path / "report" / "summary.json").read_text())
    assert {"a/method", "b/method"} <= set(summary)
    cases = (tmp_path / "report" / "cases.csv").read_text()
    assert "a/method," in cases and "b/method," in cases
    dice = [summary[m]["classes"]["sphere"]["dice_mean"] for m in ("a/method", "b/method")]
    assert dice[0] > dice[1]
    status, err = run([argv[0], str(first), str(first), *argv[2:]], capfd)
    assert status == 2 and "the same prediction folder is given twice" in err
