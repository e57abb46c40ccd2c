"""Apply a selected calibration (calibration/store.py) to a run's outputs before they are written."""

from __future__ import annotations

import math
from pathlib import Path

import numpy as np
import SimpleITK as sitk

from ..calibration.apply import calibrated_scores, calibration_reference, flagged_mask
from ..calibration.store import calibration_record, calibration_temperature
from .assembly import SegmentationOutputs
from .scores import LOWER_IS_UNCERTAIN, score_readings


def apply_calibration(outputs: SegmentationOutputs, doc: dict, path: Path) -> str | None:
    """Replace ``outputs.scores`` by the calibrated scores; return a note instead (nothing applied) when the
    run's total sample count differs from the calibration's."""
    if outputs.n_samples != doc["n_samples"]:
        tempered = calibration_temperature(doc)
        return (f"calibration {doc['id']} not applied: made with {doc['n_samples']} samples in all, this run has "
                f"{outputs.n_samples}" + (f" (its temperature {tempered:.4g} was applied to the passes)"
                                          if tempered != 1.0 else ""))
    segmentation = sitk.GetArrayViewFromImage(outputs.segmentation)
    flagged = None
    if doc["map"] in outputs.maps:
        values = sitk.GetArrayViewFromImage(outputs.maps[doc["map"]])
        flagged = int(np.count_nonzero(flagged_mask(values, doc["referral"])))
    voxel_ml = math.prod(outputs.segmentation.GetSpacing()) / 1000.0
    reference = calibration_reference(doc, LOWER_IS_UNCERTAIN)  # the calibration's ranges replace the card's
    usual = (reference, score_readings(outputs.scores["classes"], reference))
    outputs.scores = calibrated_scores(doc, outputs.scores, flagged, int(np.count_nonzero(segmentation)), voxel_ml,
                                       calibration_record(doc, path), usual)
    return None
