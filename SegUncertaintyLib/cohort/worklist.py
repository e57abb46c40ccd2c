"""worklist.csv: one row per case of a cohort run, ranked by review priority (rank 1 = review first).

Fixed columns, in this order (``COLUMNS``), then per foreground class ``<class>:volume_ml`` (scores.json's
``volume_ml``: the median of the per-sample volumes, mL), with a calibration the ``PREDICTED`` columns, and for each
score of ``SUBJECT_SCORES`` ``<class>:<score>`` and ``<class>:<score>:reading`` (the reading against the
model card's usual range: "within the model's usual range", "review recommended", "not defined", or
empty where the card gives no range):

- rank: 1..n in review-priority order;
- case: the case id (unique and stable; also the name of the case's output folder);
- status: "done", "skipped" (outputs already matched input and settings), "failed", or "stale": a row kept
  from an earlier run into the same folder whose case this run did not finish (cancelled, or not among its
  inputs) and whose method, model or sample count differ from this run's (``stale_rows``). Stale rows come
  after every row of this run, never ranked with them; their priority is emptied (it was computed against
  another run's settings) and their reason names the settings they were computed with;
- method, model, samples: the settings the row's outputs were computed with (the method, the model's name,
  the number of samples drawn; the requested values for a case that failed before it ran);
- priority: the review-priority value (higher = review first; empty for a failed case and for one
  without any defined score);
- reason: one line saying why the case ranks where it does;
- outside_calibration: with a calibration, the classes whose scores lie outside the calibration data (with
  those scores), or "no"; empty without a calibration;
- reviewed: "" or "yes"; reviewed_at: ISO 8601 time it was marked; reviewer_note: free text;
- input: the input path as given; output: the case's output folder relative to the worklist's folder
  (empty for a failed case);
- seconds: wall time of the case; error: one-line error of a failed case;
- after ``--store``/``--store-dimse``/``send`` only: stored_to, stored, store_error, store_checked
  (cohort/pacs.py).

With a calibration applied (scores.json ``predicted_dice`` per class, calibration/apply.py) the per-class
columns also hold ``<class>:predicted_dice``, ``<class>:predicted_dice_low`` and ``<class>:predicted_dice_high``
(the predicted Dice and its conformal interval at coverage 1 - alpha), and ``outside_calibration`` says, per
case, which classes' scores lie outside the calibration data ("no" when none; empty without a calibration).

Review order (``rank_rows``), in groups, then by ``priority`` (higher = review first), then by case id:

0. empty predictions: a finished case where some class's delivered segmentation is empty (scores.json
   ``empty_prediction``), its reason "no segmentation of <class>: review" (a missed structure reads as
   certain in every score, so no score can rank it);
1. outside the calibration data (the guarantee and the interval do not apply to it);
2. calibrated cases, by ascending lower bound of the predicted Dice of their worst class: priority = 1 -
   that lower bound (the Dice the case may lack, at the interval's coverage);
3. cases without a calibration, by the uncalibrated failure detector ``DETECTOR`` (segment_entropy, the
   mean over the predicted segment of the binary entropy of the mean probability): priority = its largest
   value over the case's classes. Chosen on evidence measured here (README "Ranking without a
   calibration"): on 40 labelled phantoms ``calibrate``'s failure detection gave segment_entropy AURC
   0.136 against dpw 0.186 (mc_dropout, 8 samples; oracle 0.117, random 0.229) and 0.107 against 0.173
   (ensemble; dpw carried no information), and on the real CT model pooled over organs segment_entropy
   correlated most with Dice (Spearman -0.93, dpw +0.43; BENCHMARKS.md). Zenk et al. 2025 found pairwise
   Dice (dpw) the strongest detector for ensembles of real nnU-Nets; that does not hold on this project's
   data. segment_entropy is also defined for every method, one sample included (dpw is not). The model
   card's usual ranges give the readings only, never the order: they were fitted on a few training heads
   and say nothing of which cases fail;
4. finished cases without a priority (no score defined); 5. failed cases (no outputs to review; the
   command's exit code 8 and its summary name them).

Files are written to a temporary file in the same folder and renamed over the old one.
"""

from __future__ import annotations

import csv
import io
import os
from pathlib import Path

from ..core.files import write_text_atomic

WORKLIST_CSV = "worklist.csv"
SETTING_COLUMNS = ("method", "model", "samples")  # absent in worklists written before they were added
OUTSIDE_COLUMN = "outside_calibration"  # absent in worklists written before calibrations
COLUMNS = ("rank", "case", "status", *SETTING_COLUMNS, "priority", "reason", OUTSIDE_COLUMN, "reviewed",
           "reviewed_at", "reviewer_note", "input", "output", "seconds", "error")
REQUIRED = tuple(c for c in COLUMNS if c not in (*SETTING_COLUMNS, OUTSIDE_COLUMN))  # what every worklist has
PREDICTED = ("predicted_dice", "predicted_dice_low", "predicted_dice_high")  # per class, with a calibration
STATUSES = ("done", "skipped", "failed", "stale")
# cohort/pacs.py: where a case's DICOM objects went
STORE_COLUMNS = ("stored_to", "stored", "store_error", "store_checked")
REVIEW_FIELDS = ("reviewed", "reviewed_at", "reviewer_note")  # the reviewer's, kept when a worklist is rewritten


def class_columns(class_names: list[str], calibrated: bool = False) -> list[str]:
    """The per-class columns after ``COLUMNS``, in order (``PREDICTED`` ones when ``calibrated``)."""
    from ..inference.scores import SUBJECT_SCORES

    columns = []
    for name in class_names:
        columns.append(f"{name}:volume_ml")
        if calibrated:
            columns += [f"{name}:{p}" for p in PREDICTED]
        for score in SUBJECT_SCORES:
            columns += [f"{name}:{score}", f"{name}:{score}:reading"]
    return columns


def write_csv_atomic(path: Path, rows: list[dict], columns: list[str]) -> None:
    """Write ``rows`` (dicts keyed by ``columns``; missing keys empty) to ``path`` whole or not at all
    (core.files.write_text_atomic)."""
    text = io.StringIO(newline="")
    writer = csv.DictWriter(text, fieldnames=columns, extrasaction="raise", restval="")
    writer.writeheader()
    writer.writerows(rows)
    write_text_atomic(path, text.getvalue())


def read_worklist(path: str | os.PathLike) -> list[dict]:
    """The rows of a worklist.csv (a file path or the cohort folder holding it), as dicts of strings in
    file order; ValueError naming the file when it is not a worklist (a column of ``REQUIRED`` missing)."""
    path = Path(path)
    if path.is_dir():
        path = path / WORKLIST_CSV
    with path.open(newline="", encoding="utf-8") as f:
        reader = csv.DictReader(f)
        missing = [c for c in REQUIRED if c not in (reader.fieldnames or [])]
        if missing:
            raise ValueError(f"{path} is not a SegUncertainty worklist: column(s) {', '.join(missing)} missing")
        return list(reader)


def _number(value) -> str:
    return "" if value is None else f"{value:.6g}"


DETECTOR = "segment_entropy"  # the uncalibrated failure detector; why: the module docstring


def _by_detector(scores: dict) -> tuple[float | None, str]:
    """Priority by ``DETECTOR`` (its largest value over the classes), and the reason."""
    values = [(v[DETECTOR], name) for name, v in scores.items() if v.get(DETECTOR) is not None]
    if not values:
        return None, "no score defined (an empty segment)"
    value, name = max(values)
    return value, (f"not calibrated: ranked by {DETECTOR}, the best uncalibrated failure detector measured; "
                   f"highest {name} {value:.4g}")


def _by_calibration(scores: dict) -> tuple[float | None, str, list[str]]:
    """Priority 1 - the worst class's predicted-Dice lower bound, the reason, and the classes outside the
    calibration data (with their scores)."""
    predicted = {name: v["predicted_dice"] for name, v in scores.items() if v.get("predicted_dice")}
    if not predicted:
        return None, "", []
    outside = [f"{name} ({', '.join(p['outside_calibration'])})" for name, p in predicted.items()
               if p.get("outside_calibration")]
    name, worst = min(predicted.items(), key=lambda kv: (kv[1]["interval"][0], kv[0]))
    low, high = worst["interval"]
    reason = (f"predicted Dice lower bound {low:.3f}, {name} (predicted {worst['value']:.3f}, interval "
              f"[{low:.3f}, {high:.3f}] at coverage {worst['coverage']:g})")
    if outside:
        reason = f"outside the calibration data: {'; '.join(outside)}: the guarantee does not apply; " + reason
    return 1.0 - low, reason, outside


def rank_rows(results: list[dict], reference: dict | None) -> list[dict]:
    """``results`` (process_case's dicts, with ``input``, ``output`` added) as worklist rows in review
    order, ``rank``, ``priority`` and ``reason`` filled (the rule is in this module's docstring).
    ``reference``: the card's usual ranges, for the readings only."""
    keyed = []
    for r in results:
        scores = r.get("scores") or {}
        outside: list[str] = []
        calibrated = False
        if r["status"] == "failed":
            priority, reason = None, "failed: " + (r.get("error") or "no details")
        else:
            priority, reason, outside = _by_calibration(scores)
            calibrated = priority is not None
            if not calibrated:
                priority, reason = _by_detector(scores)
        empty = [name for name, values in scores.items() if values.get("empty_prediction")]
        if r["status"] != "failed" and empty:
            reason = f"no segmentation of {', '.join(empty)}: review; " + reason
        group = (5 if r["status"] == "failed" else 0 if empty else 1 if outside else 2 if calibrated
                 else 3 if priority is not None else 4)
        keyed.append(((group, -(priority or 0.0), r["case"]), priority, reason, r, outside, calibrated))
    keyed.sort(key=lambda k: k[0])
    rows = []
    for rank, (_, priority, reason, r, outside, calibrated) in enumerate(keyed, start=1):
        rows.append({**_row_values(r, reference), "rank": str(rank), "reason": reason,
                     "priority": "" if priority is None else f"{priority:.4f}",
                     "outside_calibration": "; ".join(outside) or ("no" if calibrated else "")})
    return rows


def _row_values(result: dict, reference: dict | None) -> dict:
    """The worklist cells of one result except rank, priority and reason."""
    from ..inference.scores import SUBJECT_SCORES, score_readings

    samples = result.get("n_samples")
    row = {"case": result["case"], "status": result["status"], "method": result.get("method") or "",
           "model": result.get("model") or "", "samples": "" if samples is None else str(samples),
           "input": result.get("input", ""),
           "output": result.get("output", ""), "seconds": f"{result.get('seconds', 0):.2f}",
           "error": result.get("error", "")}
    scores = result.get("scores") or {}
    readings = score_readings(scores, reference) if reference else {}
    for name, values in scores.items():
        row[f"{name}:volume_ml"] = _number(values.get("volume_ml"))
        for score in SUBJECT_SCORES:
            row[f"{name}:{score}"] = _number(values.get(score))
            row[f"{name}:{score}:reading"] = readings.get(name, {}).get(score, {}).get("reading", "")
        predicted = values.get("predicted_dice")
        if predicted:
            row[f"{name}:predicted_dice"] = _number(predicted["value"])
            row[f"{name}:predicted_dice_low"], row[f"{name}:predicted_dice_high"] = map(_number, predicted["interval"])
    return row


def row_settings(row: dict) -> dict:
    """The row's ``SETTING_COLUMNS`` that it fills (none for a worklist written before they were added)."""
    return {c: row[c] for c in SETTING_COLUMNS if row.get(c)}


def stale_rows(kept: list[dict], current: dict, first_rank: int) -> list[dict]:
    """Earlier rows ``kept`` after this run's rows, ranked from ``first_rank`` in their earlier order; those
    computed with settings other than ``current`` (this run's ``SETTING_COLUMNS`` that are known; a row
    without settings counts as other) get status "stale", no priority and a reason naming both settings."""
    rows = []
    for rank, old in enumerate(kept, start=first_rank):
        row = dict(old, rank=str(rank))
        settings = row_settings(old)
        if row["status"] != "failed" and (not settings or any(settings.get(k) != v for k, v in current.items())):
            then = ", ".join(f"{k} {v}" for k, v in settings.items()) or "unrecorded settings"
            now = ", ".join(f"{k} {v}" for k, v in current.items())
            row.update(status="stale", priority="",
                       reason=f"stale: outputs of an earlier run ({then}), not of this run ({now}); not ranked "
                              "with this run's cases: run the cohort again to update")
        rows.append(row)
    return rows


def worklist_columns(rows: list[dict]) -> list[str]:
    """``COLUMNS`` then the per-class columns of every class in ``rows`` (first-seen order)."""
    names: list[str] = []
    for row in rows:
        for key in row:
            if key.endswith(":volume_ml") and key[: -len(":volume_ml")] not in names:
                names.append(key[: -len(":volume_ml")])
    stored = any(key in row for row in rows for key in STORE_COLUMNS)
    calibrated = any(key.endswith(":predicted_dice") for row in rows for key in row)
    return [*COLUMNS, *class_columns(names, calibrated), *(STORE_COLUMNS if stored else ())]
