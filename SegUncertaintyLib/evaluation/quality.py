"""Segmentation quality and evaluation regions for one case: Dice, HD95 (MONAI), the dilated
foreground box of paper 004, and uncertainty by confusion category (paper 002).

Arrays are (z, y, x) with ``spacing`` in mm in the same order.
"""

from __future__ import annotations

import math

import numpy as np
import torch
from monai.metrics import compute_hausdorff_distance

from .referral import dice

EMPTY_RULES = ("Dice = 1 when prediction and reference are both empty, 0 when only one is. "
               "HD95 = 0 when both are empty, NaN (undefined) when only one is.")


def dice_hd95(prediction: np.ndarray, reference: np.ndarray, spacing: tuple[float, float, float]) -> dict:
    """Dice and 95th-percentile symmetric Hausdorff distance in mm; empty masks per ``EMPTY_RULES``."""
    pred, ref = np.asarray(prediction, bool), np.asarray(reference, bool)
    if not pred.any() and not ref.any():
        return {"dice": 1.0, "hd95_mm": 0.0}
    if not pred.any() or not ref.any():
        return {"dice": 0.0, "hd95_mm": math.nan}
    as_tensor = [torch.from_numpy(m)[None, None] for m in (pred, ref)]
    hd = compute_hausdorff_distance(*as_tensor, percentile=95, spacing=list(spacing))
    return {"dice": dice(pred, ref), "hd95_mm": float(hd.item())}


def out_of_plane_axis(spacing: tuple[float, float, float]) -> int:
    """The axis with the largest spacing (the slice axis); axis 0 (z) when spacing is isotropic."""
    return int(np.argmax(np.asarray(spacing)))


def dilated_foreground_box(reference: np.ndarray, spacing: tuple[float, float, float], in_plane_mm: float = 8.0,
                           out_of_plane_slices: int = 2) -> np.ndarray:
    """Boolean mask of the reference foreground's bounding box, dilated by ``in_plane_mm`` along the
    in-plane axes and ``out_of_plane_slices`` along the slice axis, clipped to the volume (paper 004).
    Empty when the reference is empty."""
    ref = np.asarray(reference, bool)
    region = np.zeros(ref.shape, bool)
    if not ref.any():
        return region
    slice_axis = out_of_plane_axis(spacing)
    box = []
    for axis in range(ref.ndim):
        present = np.flatnonzero(ref.any(axis=tuple(a for a in range(ref.ndim) if a != axis)))
        margin = out_of_plane_slices if axis == slice_axis else math.ceil(in_plane_mm / spacing[axis] - 1e-9)
        box.append(slice(max(present[0] - margin, 0), min(present[-1] + margin + 1, ref.shape[axis])))
    region[tuple(box)] = True
    return region


def uncertainty_by_confusion(uncertainty: np.ndarray, prediction: np.ndarray, reference: np.ndarray,
                             region: np.ndarray | None = None) -> dict[str, dict[str, float]]:
    """Voxel count, mean and quartiles of the uncertainty in TP, FP, FN and TN voxels (paper 002)."""
    u = np.asarray(uncertainty, dtype=np.float64)
    pred, ref = np.asarray(prediction, bool), np.asarray(reference, bool)
    keep = np.ones(u.shape, bool) if region is None else np.asarray(region, bool)
    groups = {"TP": pred & ref, "FP": pred & ~ref, "FN": ~pred & ref, "TN": ~pred & ~ref}
    out = {}
    for name, mask in groups.items():
        values = u[mask & keep]
        if values.size:
            q1, median, q3 = np.percentile(values, [25, 50, 75])
            out[name] = {"voxels": int(values.size), "mean": float(values.mean()), "q1": float(q1),
                         "median": float(median), "q3": float(q3)}
        else:
            out[name] = {"voxels": 0, "mean": math.nan, "q1": math.nan, "median": math.nan, "q3": math.nan}
    return out


CONFUSION_EDGES = np.linspace(0.0, 1.0, 21)  # 20 bins over the normalized entropy's 0-1 range


def confusion_histograms(uncertainty: np.ndarray, prediction: np.ndarray, reference: np.ndarray,
                         region: np.ndarray | None = None,
                         edges: np.ndarray = CONFUSION_EDGES) -> dict[str, np.ndarray]:
    """Voxel counts of the uncertainty per bin in TP, FP, FN and TN voxels (within ``region``).

    Values are clipped into the edges' range, so every voxel is counted; counts add over cases, which
    gives the dataset's distributions (paper 002's figure) with the memory of one case.
    """
    u = np.clip(np.asarray(uncertainty, dtype=np.float64), edges[0], edges[-1])
    pred, ref = np.asarray(prediction, bool), np.asarray(reference, bool)
    keep = np.ones(u.shape, bool) if region is None else np.asarray(region, bool)
    groups = {"TP": pred & ref, "FP": pred & ~ref, "FN": ~pred & ref, "TN": ~pred & ~ref}
    return {name: np.histogram(u[mask & keep], bins=edges)[0] for name, mask in groups.items()}
