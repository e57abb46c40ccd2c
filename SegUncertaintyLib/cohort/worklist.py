"""worklist.csv: one row per case of a cohort run, ranked by review priority (rank 1 = review first).

Fixed columns, in this order (``COLUMNS``), then per foreground class ``<class>:volume_ml`` (scores.json's
``volume_ml``: the median of the per-sample volumes, mL) and for each
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
- reviewed: "" or "yes"; reviewed_at: ISO 8601 time it was marked; reviewer_note: free text;
- input: the input path as given; output: the case's output folder relative to the worklist's folder
  (empty for a failed case);
- seconds: wall time of the case; error: one-line error of a failed case;
- after ``--store``/``--store-dimse``/``send`` only: stored_to, stored, store_error, store_checked
  (cohort/pacs.py).

Review priority (``rank_rows``; higher = review first):

- when the model card gives usual ranges (``score_reference``: per class and score, ``review_above`` or
  ``review_below`` a limit), each bounded score's relative excess over its limit is
  ``(value - limit) / |limit - certain|`` for ``review_above`` and ``(limit - value) / |limit - certain|``
  for ``review_below``, where ``certain`` is the score's value when all samples agree with zero entropy
  (1 for dpw, 0 for the others): the distance beyond the limit in units of the limit's own distance from
  certainty, so that dpw 0.95 against a limit 0.975 weighs as much as cv 0.024 against 0.012 (positive =
  outside the usual range, "review recommended"; negative = inside). The priority is the largest excess
  over all bounded (class, score) pairs: a case ranks by its single worst score, and every case outside
  some usual range ranks before every case inside all of them. Undefined scores (null: one sample, an
  empty segment) are left out; a case with no defined bounded score has no priority;
- when the card gives no usual ranges for the run's method and sample count (fallback): each score of
  each class is ranked within the cohort, on its uncertain side (dpw negated), as a mid-rank percentile
  from 0 (least uncertain case) to 1 (most uncertain); the priority is the mean percentile over the
  case's defined scores. It only orders this cohort: it says nothing about whether any case is outside
  what the model usually does;
- empty predictions first: a finished case where some class's delivered segmentation is empty
  (scores.json ``empty_prediction``) ranks before every other case, its reason "no segmentation of
  <class>: review" (a missed structure reads as certain in every score, so no score can rank it);
- order: empty predictions, then cases with a priority (highest first), then finished cases without one,
  then failed cases last (they have no outputs to review; the command's exit code 8 and its summary name
  them); ties by
  case id.

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
COLUMNS = ("rank", "case", "status", *SETTING_COLUMNS, "priority", "reason", "reviewed", "reviewed_at",
           "reviewer_note", "input", "output", "seconds", "error")
REQUIRED = tuple(c for c in COLUMNS if c not in SETTING_COLUMNS)  # what every worklist has
STATUSES = ("done", "skipped", "failed", "stale")
# cohort/pacs.py: where a case's DICOM objects went
STORE_COLUMNS = ("stored_to", "stored", "store_error", "store_checked")
REVIEW_FIELDS = ("reviewed", "reviewed_at", "reviewer_note")  # the reviewer's, kept when a worklist is rewritten


def class_columns(class_names: list[str]) -> list[str]:
    """The per-class columns after ``COLUMNS``, in order."""
    from ..inference.scores import SUBJECT_SCORES

    columns = []
    for name in class_names:
        columns.append(f"{name}:volume_ml")
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


def excess(score: str, value: float, bound: dict) -> float:
    """Relative excess of ``value`` over a usual-range bound (> 0: outside the usual range): its distance
    beyond the limit on the uncertain side over the limit's distance from the score's certain value
    (``scores.certain_value``: 0, or 1 for dpw)."""
    from ..inference.scores import certain_value

    limit = float(bound["review_above"] if "review_above" in bound else bound["review_below"])
    beyond = value - limit if "review_above" in bound else limit - value
    return beyond / max(abs(limit - certain_value(score)), 1e-12)


def _priority_from_ranges(scores: dict, reference: dict) -> tuple[float | None, str]:
    """The largest relative excess over the card's bounds, and the reason."""
    excesses = [(excess(score, scores[name][score], bound), name, score)
                for name, bounds in reference.get("classes", {}).items() if name in scores
                for score, bound in bounds.items() if scores[name].get(score) is not None]
    if not excesses:
        return None, "no bounded score defined (one sample or an empty segment)"
    from ..inference.scores import read_score

    worst, name, score = max(excesses)
    outside = sum(e > 0 for e, _, _ in excesses)
    usual = read_score(None, reference["classes"][name][score])["usual_range"]
    shown = f"{name} {score} {scores[name][score]:.4g} (usual range {usual})"
    if outside:
        return worst, f"{outside} score(s) outside the model's usual range; worst {shown}"
    return worst, f"all scores within the model's usual range; closest {shown}"


def _percentiles(finished: list[dict]) -> dict[str, dict[tuple[str, str], float]]:
    """Per case, the mid-rank percentile (0-1, 1 = most uncertain) of each defined (class, score)."""
    from ..inference.scores import SUBJECT_SCORES, uncertain_side

    out: dict[str, dict[tuple[str, str], float]] = {r["case"]: {} for r in finished}
    pairs = {(name, score) for r in finished for name in r["scores"] for score in SUBJECT_SCORES}
    for name, score in sorted(pairs):
        defined = [r for r in finished if r["scores"].get(name, {}).get(score) is not None]
        cases = [r["case"] for r in defined]
        values = uncertain_side(score, [r["scores"][name][score] for r in defined])
        for case, value in zip(cases, values, strict=True):
            below, equal = (values < value).sum(), (values == value).sum()
            out[case][(name, score)] = (below + (equal - 1) / 2) / (len(values) - 1) if len(values) > 1 else 0.5
    return out


def rank_rows(results: list[dict], reference: dict | None) -> list[dict]:
    """``results`` (process_case's dicts, with ``input``, ``output`` added) as worklist rows in review
    order, ``rank``, ``priority`` and ``reason`` filled (the rule is in this module's docstring)."""
    finished = [r for r in results if r["status"] != "failed"]
    percentiles = None if reference else _percentiles(finished)
    keyed = []
    for r in results:
        if r["status"] == "failed":
            priority, reason = None, "failed: " + (r.get("error") or "no details")
        elif reference:
            priority, reason = _priority_from_ranges(r["scores"], reference)
        else:
            ranks = percentiles[r["case"]]
            if ranks:
                priority = sum(ranks.values()) / len(ranks)
                top = max(ranks, key=lambda k: (ranks[k], k))
                reason = (f"no usual ranges for this method in the model card: mean percentile within this cohort "
                          f"{priority:.2f} over {len(ranks)} scores; highest {top[0]} {top[1]} ({ranks[top]:.2f})")
            else:
                priority, reason = None, "no score defined (one sample or an empty segment)"
        empty = [name for name, values in (r.get("scores") or {}).items() if values.get("empty_prediction")]
        if r["status"] != "failed" and empty:
            reason = f"no segmentation of {', '.join(empty)}: review; " + reason
        group = 3 if r["status"] == "failed" else (0 if empty else 2 if priority is None else 1)
        keyed.append(((group, -(priority or 0.0), r["case"]), priority, reason, r))
    keyed.sort(key=lambda k: k[0])
    rows = []
    for rank, (_, priority, reason, r) in enumerate(keyed, start=1):
        rows.append({**_row_values(r, reference), "rank": str(rank), "reason": reason,
                     "priority": "" if priority is None else f"{priority:.4f}"})
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
    return [*COLUMNS, *class_columns(names), *(STORE_COLUMNS if stored else ())]
