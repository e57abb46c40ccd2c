"""Make the bundled sample volume: Colin27 T1 (Debian mricron-data) resampled to 2 mm, int16.

    python Testing/scripts/make_sample.py   # writes SegUncertaintyLib/sample/colin27_t1_2mm.nii.gz
"""

from __future__ import annotations

import sys
from pathlib import Path

import numpy as np
import SimpleITK as sitk

sys.path.insert(0, str(Path(__file__).parent))
from brain_data import colin27  # noqa: E402

OUT = Path(__file__).resolve().parents[2] / "SegUncertaintyLib" / "sample" / "colin27_t1_2mm.nii.gz"


def resample_to_spacing(image: sitk.Image, spacing: float, linear: bool = True) -> sitk.Image:
    size = [int(round(n * s / spacing)) for n, s in zip(image.GetSize(), image.GetSpacing(), strict=False)]
    smooth = sitk.SmoothingRecursiveGaussian(image, spacing / 2.0) if linear else image
    return sitk.Resample(smooth, size, sitk.Transform(), sitk.sitkLinear if linear else sitk.sitkNearestNeighbor,
                         image.GetOrigin(), [spacing] * 3, image.GetDirection(), 0.0, image.GetPixelID())


def main() -> None:
    t1, _ = colin27()
    small = resample_to_spacing(t1, 2.0)
    array = np.clip(np.rint(sitk.GetArrayFromImage(small)), -32768, 32767).astype(np.int16)
    out = sitk.GetImageFromArray(array)
    out.CopyInformation(small)
    sitk.WriteImage(out, str(OUT), True)
    print(OUT, out.GetSize(), OUT.stat().st_size, "bytes")


if __name__ == "__main__":
    main()
