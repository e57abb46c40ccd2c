"""``seguncertainty cohort``: cases and their ids, resume, failures, the worklist's ranking, the cohort folder.

The tiny threshold model (conftest) on small synthetic spheres; every run goes through the real command
line (``cli.main``) or ``run_cohort``.
"""

from __future__ import annotations

import csv
import json
import shutil
from html.parser import HTMLParser
from pathlib import Path

import numpy as np
import pytest
import SimpleITK as sitk

from SegUncertaintyLib import cli
from SegUncertaintyLib.cli.common import CancelFlag
from SegUncertaintyLib.cohort import worker
from SegUncertaintyLib.cohort.cases import find_cases
from SegUncertaintyLib.cohort.review import open_worklist
from SegUncertaintyLib.cohort.run import cohort_files, run_cohort
from SegUncertaintyLib.cohort.worklist import COLUMNS, rank_rows, read_worklist, write_csv_atomic
from SegUncertaintyLib.core.errors import COHORT_CASES_FAILED, CancelledError, UsageError
from SegUncertaintyLib.core.options import SegmentOptions
from SegUncertaintyLib.inference.scores import REVIEW, WITHIN
from SegUncertaintyLib.io.publish import OutputFolder
from Testing.support.dicom_series import write_series
from Testing.support.files import load_json
from Testing.support.phantoms import sphere_phantom
from Testing.support.tiny_models import write_threshold_model

REFERENCE = {"source": "test", "method": "mc_dropout", "n_samples": 4,
             "classes": {"sphere": {"cv": {"review_above": 0.012},
                                    "segment_entropy": {"review_above": 0.36}}}}


def _sphere(path: Path, radius: float, noise: float = 0.0) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    sitk.WriteImage(sphere_phantom(size=(20, 18, 16), radius_mm=radius, noise=noise), str(path))
    return path


def _model(folder: Path, reference: dict | None = None) -> Path:
    model = write_threshold_model(folder)
    if reference:
        card = json.loads((model / "card.json").read_text())
        (model / "card.json").write_text(json.dumps({**card, "score_reference": reference}))
    return model


def _argv(inputs, out, model, *extra) -> list[str]:
    return ["cohort", *map(str, inputs), "--out", str(out), "--model", str(model), "--samples", "4",
            "--progress", "none", *extra]


def _statuses(out: Path) -> dict[str, str]:
    return {row["case"]: row["status"] for row in read_worklist(out)}


@pytest.fixture(scope="module")
def cohort(tmp_path_factory):
    """One cohort run: two t1.nii.gz in different folders, a third sphere and a corrupt file, with a card
    giving usual ranges. Returns (inputs folder, output folder, exit code, model)."""
    root = tmp_path_factory.mktemp("cohort")
    inputs = root / "in"
    _sphere(inputs / "a" / "t1.nii.gz", 20.0)
    _sphere(inputs / "b" / "t1.nii.gz", 25.0, noise=0.05)
    _sphere(inputs / "c.nrrd", 15.0, noise=0.1)
    (inputs / "broken.nii.gz").write_bytes(b"not an image")
    model = _model(root / "model", REFERENCE)
    code = cli.main(_argv([inputs], root / "out", model))
    return inputs, root / "out", code, model


def test_same_file_name_gets_two_folders_and_a_corrupt_input_fails_alone(cohort):
    inputs, out, code, _ = cohort
    assert code == COHORT_CASES_FAILED == 8
    rows = read_worklist(out)
    assert len(rows) == 4
    by_input = {Path(row["input"]).relative_to(inputs).as_posix(): row for row in rows}
    assert set(by_input) == {"a/t1.nii.gz", "b/t1.nii.gz", "c.nrrd", "broken.nii.gz"}
    a, b = by_input["a/t1.nii.gz"], by_input["b/t1.nii.gz"]
    assert a["case"] != b["case"] and a["case"].startswith("t1-") and b["case"].startswith("t1-")
    for row in (a, b, by_input["c.nrrd"]):
        assert row["status"] == "done" and row["error"] == "" and row["output"] == row["case"]
        manifest = load_json(out / row["case"] / "manifest.json")
        assert manifest["input"] == row["input"]
    broken = by_input["broken.nii.gz"]
    assert broken["status"] == "failed" and "broken.nii.gz" in broken["error"] and broken["output"] == ""
    assert "\n" not in broken["error"]
    # two different volumes: their scores differ, each folder has its own
    assert load_json(out / a["case"] / "scores.json") != load_json(out / b["case"] / "scores.json")


def test_case_folder_is_what_segment_writes(cohort, tmp_path):
    inputs, out, _, model = cohort
    row = next(r for r in read_worklist(out) if r["input"].endswith("c.nrrd"))
    single = tmp_path / "single"
    assert cli.main(["segment", str(inputs / "c.nrrd"), "--model", str(model), "--samples", "4", "--out",
                     str(single), "--progress", "none"]) == 0
    case = out / row["case"]
    assert sorted(p.name for p in case.iterdir()) == sorted(p.name for p in single.iterdir())
    m_case, m_single = load_json(case / "manifest.json"), load_json(single / "manifest.json")
    assert m_case["outputs"] == m_single["outputs"]
    assert {k: v for k, v in m_case["settings"].items() if k in m_single["settings"]} == m_single["settings"]
    assert load_json(case / "scores.json") == load_json(single / "scores.json")  # same seed, same numbers


def test_worklist_ranks_by_segment_entropy_and_reads_the_cards_usual_ranges(cohort):
    """Without a calibration the order is by the uncalibrated detector (segment_entropy, highest first); the
    card's usual ranges give the readings, not the order."""
    _, out, _, _ = cohort
    rows = read_worklist(out)
    finished = [r for r in rows if r["status"] == "done"]
    scores = {r["case"]: load_json(out / r["case"] / "scores.json")["classes"] for r in finished}
    expected = sorted(scores, key=lambda c: -scores[c]["sphere"]["segment_entropy"])
    assert [r["case"] for r in rows] == [*expected, rows[-1]["case"]] and rows[-1]["status"] == "failed"
    assert [r["rank"] for r in rows] == ["1", "2", "3", "4"]
    for row in finished:
        assert float(row["priority"]) == pytest.approx(scores[row["case"]]["sphere"]["segment_entropy"], abs=6e-5)
        assert "not calibrated" in row["reason"] and row["outside_calibration"] == ""
        for score, bound in REFERENCE["classes"]["sphere"].items():
            value = scores[row["case"]]["sphere"][score]
            assert float(row[f"sphere:{score}"]) == pytest.approx(value, rel=1e-5)
            assert row[f"sphere:{score}:reading"] == (REVIEW if value > bound["review_above"] else WITHIN)
        assert row["sphere:dpw:reading"] == ""  # no bound in the card
        assert float(row["sphere:volume_ml"]) == pytest.approx(scores[row["case"]]["sphere"]["volume_ml"], rel=1e-5)


@pytest.mark.slow
def test_rerun_skips_and_changes_rerun(tmp_path):
    model = _model(tmp_path / "model")
    a, b = _sphere(tmp_path / "in" / "a.nii.gz", 20.0), _sphere(tmp_path / "in" / "b.nii.gz", 24.0)
    out = tmp_path / "out"
    assert cli.main(_argv([a, b], out, model)) == 0
    first = {c: (out / c / "manifest.json").stat().st_mtime_ns for c in _statuses(out)}
    assert cli.main(_argv([b, a], out, model)) == 0  # any order: same ids, all current
    assert _statuses(out) == dict.fromkeys(first, "skipped")
    assert {c: (out / c / "manifest.json").stat().st_mtime_ns for c in first} == first  # not rewritten
    _sphere(a, 21.0)  # changed input: that case only
    assert cli.main(_argv([a, b], out, model)) == 0
    changed = next(c for c in first if c.startswith("a-"))
    assert _statuses(out) == {c: "done" if c == changed else "skipped" for c in first}
    assert cli.main(_argv([a, b], out, model, "--seed", "3")) == 0  # changed setting: every case
    assert set(_statuses(out).values()) == {"done"}
    assert cli.main(_argv([a, b], out, model, "--seed", "3", "--maps", "entropy")) == 0
    assert set(_statuses(out).values()) == {"done"}
    assert all(not (out / c / "variance.nrrd").exists() for c in first)


def test_reviews_survive_a_rerun(tmp_path):
    model = _model(tmp_path / "model")
    a, b = _sphere(tmp_path / "in" / "a.nii.gz", 20.0), _sphere(tmp_path / "in" / "b.nii.gz", 24.0)
    out = tmp_path / "out"
    assert cli.main(_argv([a, b], out, model)) == 0
    rows = read_worklist(out)
    rows[0].update(reviewed="yes", reviewed_at="2026-01-01T00:00:00", reviewer_note="looks fine, é")
    with (out / "worklist.csv").open("w", newline="", encoding="utf-8") as f:
        writer = csv.DictWriter(f, fieldnames=list(rows[0]))
        writer.writeheader()
        writer.writerows(rows)
    assert cli.main(_argv([a], out, model)) == 0  # b not in this run: its row is kept
    after = {row["case"]: row for row in read_worklist(out)}
    assert set(after) == {rows[0]["case"], rows[1]["case"]}
    assert after[rows[0]["case"]]["reviewer_note"] == "looks fine, é"
    assert after[rows[0]["case"]]["reviewed"] == "yes"


def test_progress_json_lines(tmp_path, capsys):
    model = _model(tmp_path / "model")
    inputs = [_sphere(tmp_path / f"in/{i}.nii.gz", 18.0 + i) for i in range(3)]
    assert cli.main([*_argv(inputs, tmp_path / "out", model)[:-2], "--progress", "json"]) == 0
    lines = [json.loads(line) for line in capsys.readouterr().out.splitlines()]
    assert [line["done"] for line in lines] == [1, 2, 3]
    assert {line["total"] for line in lines} == {3} and lines[-1]["eta_s"] == 0
    assert all(line["status"] == "done" and line["seconds"] >= 0 and line["failed"] == 0 for line in lines)
    assert sorted(line["case"] for line in lines) == sorted(_statuses(tmp_path / "out"))


@pytest.mark.dicom
def test_cases_from_folders_csv_and_dicom(tmp_path):
    a = _sphere(tmp_path / "data" / "x" / "t1.nii.gz", 20.0)
    b = _sphere(tmp_path / "data" / "y" / "t1.nii.gz", 22.0)
    sphere = sitk.GetArrayFromImage(sphere_phantom(size=(20, 18, 16), spacing=(3.0, 3.0, 3.0)))
    write_series(tmp_path / "data" / "dicom", (sphere > 0.5).astype(np.int16) * 100, "1.2.3.1",
                 spacing=(3.0, 3.0, 3.0))
    write_series(tmp_path / "data" / "dicom", (sphere > 0.4).astype(np.int16) * 100, "1.2.3.2",
                 spacing=(3.0, 3.0, 3.0), prefix="B")
    (tmp_path / "data" / "notes.txt").write_text("not an image")
    cases = find_cases([str(tmp_path / "data")])
    assert sorted(c.series for c in cases if c.series) == ["1.2.3.1", "1.2.3.2"]
    assert len(cases) == 4 and len({c.id for c in cases}) == 4
    # stable: same ids in any order, through a symbolic link, from another working folder, twice named
    (tmp_path / "link").symlink_to(tmp_path / "data")
    again = find_cases([str(b), str(tmp_path / "link"), str(a)])
    assert [c.id for c in again] == [c.id for c in cases]
    # a CSV: relative paths, named cases win over generated ids
    (tmp_path / "list.csv").write_text("path,case\ndata/x/t1.nii.gz,subject-01\ndata/dicom,\n")
    (tmp_path / "named.csv").write_text("path,case\ndata/dicom,both\n")
    with pytest.raises(UsageError, match="holding 2 volumes"):
        find_cases([str(tmp_path / "named.csv")])
    listed = find_cases([str(tmp_path / "list.csv"), str(a)])
    assert sorted(c.id for c in listed if not c.series) == ["subject-01"]
    assert len(listed) == 3
    out = tmp_path / "out"
    model = _model(tmp_path / "model")
    assert cli.main(_argv([tmp_path / "list.csv"], out, model, "--method", "softmax")) == 0
    series = {load_json(out / row["case"] / "manifest.json")["settings"]["dicom_series"]
              for row in read_worklist(out)}
    assert series == {None, "1.2.3.1", "1.2.3.2"}
    # an input folder holding the cohort's own outputs: they are not inputs
    shutil.copytree(out, tmp_path / "data" / "old_out")
    assert len(find_cases([str(tmp_path / "data")])) == 4


def test_usual_ranges_for_another_sample_count_give_no_readings(tmp_path):
    """The card's ranges were measured with mc_dropout and 4 samples: a cohort with 5 samples has no reading
    (before, every case read against ranges that do not hold)."""
    _sphere(tmp_path / "in" / "a.nii.gz", 20.0)
    _sphere(tmp_path / "in" / "b.nii.gz", 15.0, noise=0.1)
    model = _model(tmp_path / "model", REFERENCE)
    argv = _argv([tmp_path / "in"], tmp_path / "out", model)
    argv[argv.index("--samples") + 1] = "5"
    assert cli.main(argv) == 0
    rows = read_worklist(tmp_path / "out")
    assert {row["sphere:cv:reading"] for row in rows} == {""}
    assert all(row["reason"].startswith("not calibrated") for row in rows)


@pytest.mark.parametrize(("files", "code", "message"), [
    ({"l.csv": "file\nx.nii.gz\n"}, 2, "no 'path' column"),
    ({"l.csv": "path,case\na.nii.gz,../evil\n"}, 2, "Unsafe case name"),
    ({"l.csv": "path,case\na.nii.gz,worklist.csv\n"}, 2, "Unsafe case name"),
    ({"l.csv": "path,case\na.nii.gz,s1\nb.nii.gz,s1\n"}, 2, "duplicate case name"),
    ({"l.csv": "path\n"}, 3, "No volumes found"),
    ({"empty/readme.txt": "nothing"}, 3, "No volumes found"),
])
def test_bad_cohort_inputs_are_refused_in_one_line(tmp_path, capsys, files, code, message):
    for name, text in files.items():
        (tmp_path / name).parent.mkdir(parents=True, exist_ok=True)
        (tmp_path / name).write_text(text)
    _sphere(tmp_path / "a.nii.gz", 20.0)
    given = tmp_path / next(iter(files)).split("/")[0]
    assert cli.main(["cohort", str(given), "--out", str(tmp_path / "out"), "--progress", "none"]) == code
    err = capsys.readouterr().err
    assert message in err and len(err.strip().splitlines()) == 1
    assert not (tmp_path / "out").exists()


def test_missing_input_and_bad_workers(tmp_path, capsys):
    assert cli.main(["cohort", str(tmp_path / "nope.nii.gz"), "--out", str(tmp_path / "out")]) == 3
    _sphere(tmp_path / "a.nii.gz", 20.0)
    assert cli.main(["cohort", str(tmp_path / "a.nii.gz"), "--out", str(tmp_path / "out"), "--workers", "0"]) == 2
    assert cli.main(["cohort", str(tmp_path / "a.nii.gz"), "--out", str(tmp_path / "out"), "--address", "x:1"]) == 2
    assert "Traceback" not in capsys.readouterr().err


def test_cohort_folder_not_ours_and_locked(tmp_path, capsys):
    model = _model(tmp_path / "model")
    a = _sphere(tmp_path / "in" / "a.nii.gz", 20.0)
    out = tmp_path / "out"
    out.mkdir()
    (out / "thesis.docx").write_text("precious")
    assert cli.main(_argv([a], out, model)) == 5
    assert sorted(p.name for p in out.iterdir()) == ["thesis.docx"]
    (out / "thesis.docx").unlink()
    assert cli.main(_argv([a], out, model)) == 0
    with OutputFolder(out, cohort_files):  # another run holds the cohort folder
        assert cli.main(_argv([a], out, model, "--seed", "2")) == 5
    assert "Another seguncertainty run" in capsys.readouterr().err
    assert set(_statuses(out).values()) == {"done"} and load_json(out / "cohort.json")["tool"].startswith("seg")
    (out / "stray.txt").write_text("x")  # a file the tool did not write, after a run
    assert cli.main(_argv([a], out, model)) == 5


def test_cancel_keeps_finished_cases_in_the_worklist(tmp_path):
    model = _model(tmp_path / "model")
    inputs = [_sphere(tmp_path / f"in/{i}.nii.gz", 18.0 + i) for i in range(3)]

    def cancelled() -> bool:  # the user presses Ctrl-C once the first case is written
        return any(not p.parent.name.startswith(".") for p in (tmp_path / "out").glob("*/manifest.json"))

    with pytest.raises(CancelledError, match="1 of 3 cases finished"):
        run_cohort(inputs, tmp_path / "out", SegmentOptions(model=str(model), samples=4), cancelled=cancelled)
    rows = read_worklist(tmp_path / "out")
    assert [r["status"] for r in rows] == ["done"]
    run_cohort(inputs, tmp_path / "out", SegmentOptions(model=str(model), samples=4))
    assert sorted(_statuses(tmp_path / "out").values()) == ["done", "done", "skipped"]


def test_worker_loads_the_model_once_and_records_errors(tmp_path, monkeypatch):
    from SegUncertaintyLib.models import loader

    model = _model(tmp_path / "model")
    loads = []
    real = loader.load_model
    monkeypatch.setattr(loader, "load_model", lambda ref: loads.append(ref) or real(ref))
    monkeypatch.setattr(worker, "_models", {})
    options = SegmentOptions(model=str(model), samples=3).as_dict()
    items = [{"case": f"c{i}", "path": str(_sphere(tmp_path / f"{i}.nii.gz", 20.0 + i)), "input": f"{i}.nii.gz",
              "series": None, "files": [], "out": str(tmp_path / "out" / f"c{i}"), "options": options,
              "threads": None} for i in range(2)]
    results = [worker.process_case(item) for item in items]
    assert [r["status"] for r in results] == ["done", "done"] and loads == [str(model)]
    bad = worker.process_case({**items[0], "case": "c9", "options": {**options, "model": str(tmp_path / "none")}})
    assert bad["status"] == "failed" and bad["error"] and bad["scores"] is None
    unreadable = worker.process_case({**items[0], "case": "c8", "path": str(tmp_path)})  # a folder, not a file
    assert unreadable["status"] == "failed" and "\n" not in unreadable["error"]


@pytest.mark.slow
def test_two_local_workers_give_the_same_worklist(tmp_path):
    model = _model(tmp_path / "model")
    inputs = [_sphere(tmp_path / f"in/{i}.nii.gz", 18.0 + 2 * i) for i in range(3)]
    one = run_cohort(inputs, tmp_path / "one", SegmentOptions(model=str(model), samples=4))
    two = run_cohort(inputs, tmp_path / "two", SegmentOptions(model=str(model), samples=4), workers=2)
    drop = ("seconds",)
    assert [{k: v for k, v in r.items() if k not in drop} for r in one] == \
        [{k: v for k, v in r.items() if k not in drop} for r in two]
    for row in one:
        assert load_json(tmp_path / "one" / row["case"] / "scores.json") == \
            load_json(tmp_path / "two" / row["case"] / "scores.json")


# -- ranking on constructed scores --------------------------------------------------------------------
def _result(case, status="done", **scores):
    return {"case": case, "status": status, "error": "boom" if status == "failed" else "", "seconds": 1.0,
            "scores": None if status == "failed" else {"brain": {"volume_ml": 1.0, **scores}}}


def test_ranking_without_a_calibration_by_hand_ignores_the_cards_ranges():
    """Ordered by the highest segment_entropy over the classes; the card's ranges only give readings (a case
    far outside the cv range but with a low segment_entropy ranks after one inside every range)."""
    reference = {"classes": {"brain": {"cv": {"review_above": 0.02}, "dpw": {"review_below": 0.9}}}}
    results = [
        _result("a", cv=0.5, dpw=0.2, segment_entropy=0.05),    # outside both ranges, low entropy
        _result("b", cv=0.01, dpw=0.99, segment_entropy=0.30),
        _result("c", cv=0.03, dpw=0.95, segment_entropy=0.20),
        _result("d", cv=None, dpw=None, segment_entropy=None),  # nothing defined
        _result("e", status="failed"),
    ]
    rows = rank_rows(results, reference)
    assert [r["case"] for r in rows] == ["b", "c", "a", "d", "e"]
    assert [r["rank"] for r in rows] == ["1", "2", "3", "4", "5"]
    assert [float(r["priority"]) for r in rows[:3]] == pytest.approx([0.30, 0.20, 0.05])
    assert rows[3]["priority"] == rows[4]["priority"] == ""
    assert rows[2]["brain:cv:reading"] == REVIEW and rows[0]["brain:cv:reading"] == WITHIN
    assert rows[3]["brain:cv:reading"] == "not defined" and "boom" in rows[4]["reason"]
    assert rows[0]["reason"] == ("not calibrated: ranked by segment_entropy, the best uncalibrated failure detector "
                                 "measured; highest brain 0.3")
    assert set(rows[0]) <= set(COLUMNS) | {f"brain:{k}" for k in ("volume_ml", "cv", "cv:reading", "dpw",
                                                                   "dpw:reading", "ulabelled", "ulabelled:reading",
                                                                   "segment_entropy", "segment_entropy:reading",
                                                                   "diversity", "diversity:reading")}


def test_ranking_takes_the_worst_class():
    results = [{"case": "x", "status": "done", "seconds": 1.0,
                "scores": {"liver": {"segment_entropy": 0.1}, "spleen": {"segment_entropy": 0.4}}},
               {"case": "y", "status": "done", "seconds": 1.0,
                "scores": {"liver": {"segment_entropy": 0.3}, "spleen": {"segment_entropy": 0.2}}}]
    rows = rank_rows(results, None)
    assert [r["case"] for r in rows] == ["x", "y"] and "spleen" in rows[0]["reason"]


# -- worklist.html -----------------------------------------------------------------------------------
class _Page(HTMLParser):
    """Rows of the worklist table (cell texts), every href/src, and the count of script elements."""

    def __init__(self):
        super().__init__()
        self.rows, self.links, self.scripts, self.header = [], [], 0, []
        self._cell = None
        self._in_body = False

    def handle_starttag(self, tag, attrs):
        attrs = dict(attrs)
        if tag == "script":
            self.scripts += 1
        elif tag == "tbody":
            self._in_body = True
        elif tag == "tr" and self._in_body:
            self.rows.append([])
        elif tag in ("td", "th"):
            self._cell = []
        for key in ("href", "src"):
            if key in attrs:
                self.links.append(attrs[key])

    def handle_endtag(self, tag):
        if tag in ("td", "th") and self._cell is not None:
            text = "".join(self._cell)
            (self.rows[-1] if tag == "td" and self.rows else self.header).append(text)
            self._cell = None

    def handle_data(self, data):
        if self._cell is not None:
            self._cell.append(data)


def _page(out: Path) -> _Page:
    page = _Page()
    page.feed((out / "worklist.html").read_text(encoding="utf-8"))
    return page


def test_worklist_html_rows_order_and_links(cohort):
    _, out, _, _ = cohort
    page = _page(out)
    rows = read_worklist(out)
    case_col = page.header.index("case")
    assert [r[case_col] for r in page.rows] == [r["case"] for r in rows]
    assert [r[page.header.index("status")] for r in page.rows] == [r["status"] for r in rows]
    finished = [r["case"] for r in rows if r["status"] != "failed"]
    assert sorted(page.links) == sorted([f"{c}/" for c in finished] + [f"{c}/overview.png" for c in finished] * 2)
    root = out.resolve()
    for link in page.links:  # relative, inside the cohort folder, pointing at what exists
        assert "://" not in link and not link.startswith("/")
        target = (out / link).resolve()
        assert target.is_relative_to(root) and target.exists()
    assert page.scripts == 1  # only the page's own sorting script
    assert "://" not in (out / "worklist.html").read_text()  # nothing fetched from the network


def test_worklist_html_escapes_user_text(tmp_path):
    model = _model(tmp_path / "model")
    nasty = _sphere(tmp_path / "in" / "<b>x&'y\".nii.gz", 20.0)
    out = tmp_path / "out"
    assert cli.main(_argv([nasty], out, model)) == 0
    rows = read_worklist(out)
    rows[0]["reviewer_note"] = "<script>alert(1)</script>"
    with (out / "worklist.csv").open("w", newline="", encoding="utf-8") as f:
        writer = csv.DictWriter(f, fieldnames=list(rows[0]))
        writer.writeheader()
        writer.writerows(rows)
    assert cli.main(_argv([nasty], out, model)) == 0
    text = (out / "worklist.html").read_text(encoding="utf-8")
    assert "<b>x" not in text and "<script>alert" not in text
    page = _page(out)
    assert page.scripts == 1
    cells = page.rows[0]
    assert str(nasty) in cells[page.header.index("input")]
    assert cells[page.header.index("reviewer_note")] == "<script>alert(1)</script>"


CHROMIUM = Path("/usr/bin/chromium")


@pytest.mark.skipif(not CHROMIUM.exists(), reason="needs Debian's chromium (apt-get install chromium)")
def test_worklist_html_sorts_in_a_real_browser(cohort, tmp_path):
    """Headless Chromium loads a copy of the page with a click on the 'priority' header appended: the
    rows come out by ascending priority, the failed case (no priority) still last."""
    import subprocess

    _, out, _, _ = cohort
    page = (out / "worklist.html").read_text(encoding="utf-8")
    header = _page(out).header
    click = f'<script>document.querySelectorAll("#worklist th")[{header.index("priority")}].click();</script>'
    copy = tmp_path / "page.html"  # beside the cohort folder, not in it
    copy.write_text(page.replace("</body>", click + "</body>"), encoding="utf-8")
    profile = tmp_path / "profile"
    dom = subprocess.run([str(CHROMIUM), "--headless", "--no-sandbox", "--disable-gpu", "--disable-quic",
                          "--no-first-run", "--disable-background-networking", "--disable-component-update",
                          "--disable-sync", f"--user-data-dir={profile}", "--dump-dom", copy.as_uri()],
                         capture_output=True, text=True, timeout=60, check=True).stdout
    sorted_page = _Page()
    sorted_page.feed(dom)
    rows = read_worklist(out)
    finished = sorted((r for r in rows if r["priority"]), key=lambda r: float(r["priority"]))
    expected = [r["case"] for r in finished] + [r["case"] for r in rows if not r["priority"]]
    assert [r[header.index("case")] for r in sorted_page.rows] == expected
    assert expected != [r["case"] for r in rows]  # the click changed the order
    assert 'class="asc"' in dom


def test_cli_cancel_exits_130_with_the_worklist_written(tmp_path, monkeypatch, capsys):
    monkeypatch.setattr(CancelFlag, "__call__", lambda self: True)  # Ctrl-C before the first case ends
    model = _model(tmp_path / "model")
    inputs = [_sphere(tmp_path / f"in/{i}.nii.gz", 18.0 + i) for i in range(2)]
    assert cli.main(_argv(inputs, tmp_path / "out", model)) == 130
    assert "0 of 2 cases finished" in capsys.readouterr().err
    assert read_worklist(tmp_path / "out") == []
    assert sorted(p.name for p in (tmp_path / "out").iterdir()) == [
        ".seguncertainty-worklist.csv.lock", "cohort.json", "worklist.csv", "worklist.html"]  # the lock file stays


def test_an_executor_failing_midway_leaves_the_worklist_of_finished_cases(tmp_path, monkeypatch, capsys):
    """A cluster lost after the first case: exit 1 with one line, the finished case in worklist.csv, and
    the next run resumes (skips it)."""
    from SegUncertaintyLib.cohort import run as run_module

    model = _model(tmp_path / "model")
    inputs = [_sphere(tmp_path / f"in/{i}.nii.gz", 18.0 + i) for i in range(3)]
    real = run_module.run_tasks

    def lost_after_one(task, items, *args):
        finished = real(task, items, *args)
        yield next(finished)
        raise ConnectionError("cluster lost")

    monkeypatch.setattr(run_module, "run_tasks", lost_after_one)
    assert cli.main(_argv(inputs, tmp_path / "out", model)) == 1
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "local executor failed after 1 of 3 cases (ConnectionError: cluster lost)" in err[0]
    assert [r["status"] for r in read_worklist(tmp_path / "out")] == ["done"]
    monkeypatch.setattr(run_module, "run_tasks", real)
    assert cli.main(_argv(inputs, tmp_path / "out", model)) == 0
    assert sorted(_statuses(tmp_path / "out").values()) == ["done", "done", "skipped"]


@pytest.mark.dicom
def test_a_corrupt_dicom_file_fails_its_series_alone(tmp_path, capsys):
    """A truncated slice in one series' folder: that case fails naming the file (its series may lack a
    slice); the other series, a NIfTI and a folder of nothing but a corrupt DICOM file are cases too."""
    sphere = sitk.GetArrayFromImage(sphere_phantom(size=(20, 18, 16), spacing=(3.0, 3.0, 3.0)))
    volume = (sphere > 0.5).astype(np.int16) * 100
    write_series(tmp_path / "in" / "good", volume, "1.2.3.1", spacing=(3.0, 3.0, 3.0))
    bad = write_series(tmp_path / "in" / "bad", volume, "1.2.3.2", spacing=(3.0, 3.0, 3.0))
    bad[3].write_bytes(bad[3].read_bytes()[:-30])
    (tmp_path / "in" / "lone").mkdir()
    (tmp_path / "in" / "lone" / "x.dcm").write_bytes(b"\0" * 128 + b"DICM garbage")
    _sphere(tmp_path / "in" / "t1.nii.gz", 20.0)
    model = _model(tmp_path / "model")
    assert cli.main(_argv([tmp_path / "in"], tmp_path / "out", model, "--method", "softmax")) == 8
    rows = {row["input"]: row for row in read_worklist(tmp_path / "out")}
    given = tmp_path / "in"
    assert {k: r["status"] for k, r in rows.items()} == {
        str(given / "good"): "done", str(given / "t1.nii.gz"): "done",
        str(given / "bad"): "failed", str(given / "lone"): "failed"}
    error = rows[str(given / "bad")]["error"]
    assert "IM0003.dcm" in error and "truncated or corrupt" in error
    assert "x.dcm" in rows[str(given / "lone")]["error"]


@pytest.mark.slow
def test_a_mark_made_while_the_worklist_is_rewritten_is_kept(tmp_path, monkeypatch):
    """A reviewer marks a case (another process) between a rerun's reading of the earlier reviews and its
    rewrite of the worklist: the rerun holds the worklist's lock, so the mark lands after it, not under it."""
    import subprocess
    import sys
    import time

    from SegUncertaintyLib.cohort import run as run_module

    model = _model(tmp_path / "model")
    inputs = [_sphere(tmp_path / "in" / "a.nii.gz", 20.0)]
    options = SegmentOptions(model=str(model), samples=3)
    case = run_cohort(inputs, tmp_path / "out", options)[0]["case"]
    real, marker = run_module.worklist_columns, []

    def columns_while_a_reviewer_marks(*args):  # after the earlier worklist's reviews were read
        marker.append(subprocess.Popen([sys.executable, "-c", (
            "import sys; from SegUncertaintyLib.cohort.review import mark_reviewed; "
            "mark_reviewed(sys.argv[1], sys.argv[2], note='checked')"), str(tmp_path / "out"), case]))
        time.sleep(3.0)  # without the lock the mark is written now, then overwritten by the rerun
        return real(*args)

    monkeypatch.setattr(run_module, "worklist_columns", columns_while_a_reviewer_marks)
    run_cohort(inputs, tmp_path / "out", options)
    assert marker[0].wait(timeout=60) == 0
    row = read_worklist(tmp_path / "out")[0]
    assert (row["reviewed"], row["reviewer_note"]) == ("yes", "checked")


@pytest.mark.cluster
def test_an_unreachable_cluster_is_refused_before_the_cohort_folder_is_made(tmp_path, capsys):
    import socket

    with socket.socket() as s:  # a port nothing listens on
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    model = _model(tmp_path / "model")
    inputs = [_sphere(tmp_path / "in" / "a.nii.gz", 20.0)]
    code = cli.main(_argv(inputs, tmp_path / "out", model, "--executor", "dask", "--address", f"127.0.0.1:{port}"))
    assert code == 1 and "cannot join the Dask cluster" in capsys.readouterr().err
    assert not (tmp_path / "out").exists()


def test_a_cancelled_rerun_with_another_method_marks_the_earlier_rows_stale(tmp_path):
    model = _model(tmp_path / "model")
    inputs = [_sphere(tmp_path / f"in/{i}.nii.gz", 18.0 + i) for i in range(3)]
    run_cohort(inputs, tmp_path / "out", SegmentOptions(model=str(model), samples=4))
    first = read_worklist(tmp_path / "out")
    assert {(r["method"], r["model"], r["samples"]) for r in first} == {("mc_dropout", "threshold-model", "4")}

    def cancelled() -> bool:  # Ctrl-C once the first case of the re-run is written
        return any(json.loads(p.read_text())["method"] == "ensemble"
                   for p in (tmp_path / "out").glob("*/manifest.json") if not p.parent.name.startswith("."))

    with pytest.raises(CancelledError, match="1 of 3 cases finished"):
        run_cohort(inputs, tmp_path / "out", SegmentOptions(model=str(model), method="ensemble"), cancelled=cancelled)
    rows = read_worklist(tmp_path / "out")
    assert [(r["rank"], r["status"], r["method"], r["samples"]) for r in rows] == [
        ("1", "done", "ensemble", "2"), ("2", "stale", "mc_dropout", "4"), ("3", "stale", "mc_dropout", "4")]
    assert all(r["priority"] == "" and r["reason"].startswith("stale: ") and "method mc_dropout" in r["reason"]
               and "method ensemble" in r["reason"] for r in rows[1:])
    assert rows[0]["priority"] != ""
    page = (tmp_path / "out" / "worklist.html").read_text()
    assert page.count('class="stale"') == 2
    # the run finished with the same settings: nothing is stale any more
    run_cohort(inputs, tmp_path / "out", SegmentOptions(model=str(model), method="ensemble"))
    assert sorted(_statuses(tmp_path / "out").values()) == ["done", "done", "skipped"]


def test_a_worklist_without_setting_columns_is_still_read_and_its_rows_are_stale(tmp_path):
    model = _model(tmp_path / "model")
    inputs = [_sphere(tmp_path / f"in/{i}.nii.gz", 18.0 + i) for i in range(2)]
    run_cohort(inputs, tmp_path / "out", SegmentOptions(model=str(model), samples=4))
    path = tmp_path / "out" / "worklist.csv"
    rows = read_worklist(path)
    old_columns = [c for c in rows[0] if c not in ("method", "model", "samples")]  # as an earlier version wrote
    write_csv_atomic(path, [{c: r[c] for c in old_columns} for r in rows], old_columns)
    assert [r["case"] for r in open_worklist(path)[1]] == [r["case"] for r in rows]
    run_cohort(inputs[:1], tmp_path / "out", SegmentOptions(model=str(model), samples=4))
    assert [r["status"] for r in read_worklist(path)] == ["skipped", "stale"]  # its settings are unknown
