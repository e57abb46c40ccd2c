"""The real labelled T1 heads that ship offline, on the bundled model's grid.

- MNI152 2009a symmetric T1 template and brain mask: nilearn (PyPI, BSD), no download;
- Colin27 (ch2) T1 and its brain-extracted version ch2bet (> 0 = brain): Debian ``mricron-data``
  (``apt-get install mricron-data``) under /usr/share/mricron/templates.
Out-of-distribution inputs: the macaque INIA19 T1 brain (mricron-data) and an EPI volume (nibabel's
test data ``example4d.nii.gz``, first frame).
"""

from __future__ import annotations

import tempfile
from pathlib import Path

import numpy as np
import SimpleITK as sitk

MRICRON = Path("/usr/share/mricron/templates")


def _from_nibabel(img) -> sitk.Image:
    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / "x.nii.gz"
        img.to_filename(str(path))
        return sitk.ReadImage(str(path), sitk.sitkFloat32)


def mni152() -> tuple[sitk.Image, sitk.Image]:
    """MNI152 2009a T1 (1 mm) and its brain mask as float images (mask 0/1)."""
    from nilearn import datasets

    t1 = _from_nibabel(datasets.load_mni152_template(resolution=1))
    mask = _from_nibabel(datasets.load_mni152_brain_mask(resolution=1))
    return t1, mask


def colin27() -> tuple[sitk.Image, sitk.Image]:
    """Colin27 T1 (1 mm) and its brain mask (ch2bet > 0)."""
    if not (MRICRON / "ch2.nii.gz").exists():
        raise SystemExit("Colin27 needs Debian's mricron-data: apt-get install mricron-data")
    t1 = sitk.ReadImage(str(MRICRON / "ch2.nii.gz"), sitk.sitkFloat32)
    bet = sitk.ReadImage(str(MRICRON / "ch2bet.nii.gz"), sitk.sitkFloat32)
    mask = sitk.Cast(bet > 0, sitk.sitkFloat32)
    mask.CopyInformation(t1)
    return t1, mask


def macaque() -> sitk.Image:
    """INIA19 macaque T1 brain: out of distribution (species, skull-stripped, size)."""
    return sitk.ReadImage(str(MRICRON / "inia19-t1-brain.nii.gz"), sitk.sitkFloat32)


def epi() -> sitk.Image:
    """First frame of nibabel's example 4D EPI: out of distribution (contrast, resolution)."""
    import nibabel
    from nibabel.testing import data_path

    img = nibabel.load(str(Path(data_path) / "example4d.nii.gz"))
    frame = nibabel.Nifti1Image(np.asarray(img.dataobj)[..., 0].astype(np.float32), img.affine)
    return _from_nibabel(frame)


def labelled_subjects() -> dict[str, tuple[sitk.Image, sitk.Image]]:
    return {"mni152": mni152(), "colin27": colin27()}
