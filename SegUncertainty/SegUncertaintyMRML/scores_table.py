"""The subject-level scores (the command line's scores.json) as a table node with plain-language readings."""

from __future__ import annotations

import vtk

COLUMNS = ("Structure", "Score", "Value", "Reading", "Definition")
NO_REFERENCE = "no reference range in the model card"


def format_value(value) -> str:
    """Numbers to 4 significant digits, intervals as 'a - b', flags as 'yes'/'no', missing values as 'n/a'."""
    if value is None:
        return "n/a"
    if isinstance(value, bool):
        return "yes" if value else "no"
    if isinstance(value, (list, tuple)):
        return " - ".join(format_value(v) for v in value)
    return f"{value:.4g}"


def predicted_dice_row(structure: str, predicted: dict, readings: dict) -> tuple[str, ...]:
    """The row of a calibrated run's predicted Dice (calibration/apply.py): the value with its interval and
    nominal coverage; the reading is scores.json's for the class's calibration: it says when the case lies
    outside the calibration data."""
    lo, hi = predicted["interval"]
    value = (f"{predicted['value']:.3f} ({lo:.3f} - {hi:.3f}, nominal coverage "
             f"{100 * predicted['coverage']:.0f} %)")
    reading = readings.get(structure, {}).get("calibration", {}).get("reading") or ""  # calibration/apply.py
    definition = ("Dice predicted from the subject scores, with a conformal interval "
                  f"({predicted.get('method') or 'see the calibration report'}); marginal over cases, not per case")
    return structure, "predicted Dice", value, reading, definition


def score_rows(scores: dict) -> list[tuple[str, ...]]:
    """One row per structure and score: (structure, score, value, reading, definition + direction); a
    calibrated run's predicted Dice first (:func:`predicted_dice_row`)."""
    definitions = scores.get("definitions", {})
    readings = scores.get("readings", {})
    rows = []
    for structure, values in scores["classes"].items():
        if isinstance(values.get("predicted_dice"), dict):
            rows.append(predicted_dice_row(structure, values["predicted_dice"], readings))
        for score, value in values.items():
            if score == "predicted_dice":
                continue
            info = definitions.get(score, {})
            direction = info.get("direction", "")
            reading = readings.get(structure, {}).get(score, {}).get("reading")
            if reading is None:
                reading = "" if direction == "information" else NO_REFERENCE
            definition = f"{info.get('definition', score)} ({direction})" if direction else info.get("definition", "")
            rows.append((structure, score, format_value(value), reading, definition))
    return rows


def add_scores_table(scene, scores: dict, name: str):
    """A new vtkMRMLTableNode with COLUMNS (all strings) holding ``score_rows(scores)``."""
    table_node = scene.AddNewNodeByClass("vtkMRMLTableNode", name)
    table = table_node.GetTable()
    for column in COLUMNS:
        array = vtk.vtkStringArray()
        array.SetName(column)
        table_node.AddColumn(array)
    for row in score_rows(scores):
        index = table_node.AddEmptyRow()
        for col, text in enumerate(row):
            table.SetValue(index, col, text)
    table_node.SetUseColumnTitleAsColumnHeader(True)
    table_node.SetLocked(True)  # results are read-only in the table view
    return table_node


def table_rows(table_node) -> list[tuple[str, ...]]:
    """All rows of a table node as tuples of strings (for display and tests)."""
    table = table_node.GetTable()
    return [tuple(table.GetValue(r, c).ToString() for c in range(table.GetNumberOfColumns()))
            for r in range(table.GetNumberOfRows())]
