"""A small cohort as ``seguncertainty cohort`` lays it out, for the Slicer-side tests: real ``segment`` run
folders DIR/<case>/ of the threshold model on spheres of different radii, and DIR/worklist.csv written with
worklist.write_csv_atomic, its rows deliberately not in rank order."""

from __future__ import annotations

from pathlib import Path

import SimpleITK as sitk

from SegUncertaintyLib import cli
from SegUncertaintyLib.cohort.worklist import COLUMNS, write_csv_atomic
from Testing.support.phantoms import sphere_phantom
from Testing.support.tiny_models import write_threshold_model

# case id -> (rank, sphere radius in mm; None: the case failed)
CASES = {"small": (2, 12.0), "broken": (3, None), "large": (1, 22.0), "medium": (4, 17.0)}
RANK_ORDER = ["large", "small", "broken", "medium"]


def make_cohort(folder: Path) -> Path:
    """The cohort folder with its worklist.csv; inputs in folder/inputs (absolute paths in the manifests)."""
    model = write_threshold_model(folder / "model")
    (folder / "inputs").mkdir(parents=True)
    rows = []
    for case, (rank, radius) in CASES.items():
        image = folder / "inputs" / f"{case}.nrrd"
        row = {"rank": str(rank), "case": case, "input": str(image), "seconds": "1.0"}
        if radius is None:
            rows.append({**row, "status": "failed", "error": f"Could not read image file {image}"})
            continue
        sitk.WriteImage(sphere_phantom(radius_mm=radius), str(image))
        assert cli.main(["segment", str(image), "--model", str(model), "--samples", "4", "--out",
                         str(folder / case), "--progress", "none", "--no-overview"]) == 0
        rows.append({**row, "status": "done", "priority": f"{5 - rank:.2f}", "reason": f"rank {rank} on purpose",
                     "output": case})
    write_csv_atomic(folder / "worklist.csv", rows, list(COLUMNS))
    return folder / "worklist.csv"
