"""The lesion-labelled CTs and brain MRs that ship in pyradiomics' source archive on PyPI (``data/``).

    python Testing/scripts/radiomics_data.py [--cache Testing/scripts/_work]

Fetches ``pyradiomics 3.1.0``'s source archive into ``<cache>/archives`` (gitignored; never commit it),
checks its sha256, and extracts only the volumes below into ``<cache>/pyradiomics``:

- ``lung1``, ``lung2``: chest CTs (512x512, 0.57 / 0.63 mm in-plane, 5 mm slices), label 1 = one lung lesion;
- ``brain1``, ``brain2``: brain MRs (256x256, 0.78 mm in-plane, 6.5 mm slices), label 1 = one brain lesion.

The labels mark a lesion only (no organ, no brain mask): what they can check for our models is said where
they are used. pyradiomics is BSD-3-Clause.

Why a direct URL: ``pip download pyradiomics==3.1.0 --no-binary :all:`` fails on this index, twice over:
with build isolation pip must build numpy from source to prepare the sdist's metadata (``--no-binary
:all:`` applies to build dependencies too), and the metadata it then builds says version 3.0.1a1, not the
requested 3.1.0. A direct-URL requirement to the index's file has no version to check, and its build
dependencies may be wheels; the archive's sha256 is then checked here.
"""

from __future__ import annotations

import sys
import tarfile
from pathlib import Path

import numpy as np
import SimpleITK as sitk

sys.path.insert(0, str(Path(__file__).parent))
from ct_data import WORK, DataError, download_archive, prepare_main  # noqa: E402

PACKAGE, VERSION = "pyradiomics", "3.1.0"
ARCHIVE = f"{PACKAGE}-{VERSION}.tar.gz"
ARCHIVE_SHA256 = "24722c962a6bbd09bc39c1c67dbffe92435f9692a421fabaae8a6b4511eb48e4"
URL = ("https://files.pythonhosted.org/packages/03/c1/20fc2c50ab1e3304da36d866042a1905a2b05a1431ece35448ab6b"
       f"4578f2/{ARCHIVE}")
PREFIX = f"{PACKAGE}-{VERSION}/data/"
# case -> (size x, y, z, in-plane spacing mm): what verify() expects
CASES = {"lung1": ((512, 512, 48), 0.570), "lung2": ((512, 512, 61), 0.627),
         "brain1": ((256, 256, 25), 0.781), "brain2": ((256, 256, 23), 0.781)}


def fetch_archive(cache: Path = WORK) -> Path:
    """The source archive in ``cache/archives`` (pip, direct URL to PyPI's file), its sha256 checked."""
    return download_archive(f"{URL}#sha256={ARCHIVE_SHA256}", cache / "archives" / ARCHIVE, ARCHIVE_SHA256,
                            f"{PACKAGE} {VERSION}", how="")


def extract(archive: Path, cache: Path = WORK) -> Path:
    """Extract only ``<case>_image.nrrd`` and ``<case>_label.nrrd`` of CASES into ``cache/pyradiomics``."""
    target = cache / PACKAGE
    names = {f"{PREFIX}{case}_{kind}.nrrd" for case in CASES for kind in ("image", "label")}
    with tarfile.open(archive, "r:gz") as tar:
        wanted = [m for m in tar.getmembers() if m.isfile() and m.name in names]
        for member in wanted:
            member.name = member.name[len(PREFIX):]
        tar.extractall(target, members=wanted, filter="data")
    return target


def verify(folder: Path) -> None:
    """Every case's image and label are there, on the expected grid, the label 0/1 with some lesion."""
    for case, (size, spacing) in CASES.items():
        for kind in ("image", "label"):
            path = folder / f"{case}_{kind}.nrrd"
            if not path.is_file():
                raise DataError(f"{path} is missing from the archive")
            image = sitk.ReadImage(str(path))
            if image.GetSize() != size or not np.isclose(image.GetSpacing()[0], spacing, atol=0.01):
                raise DataError(f"{path}: unexpected grid {image.GetSize()} {image.GetSpacing()}")
            if kind == "label" and set(np.unique(sitk.GetArrayViewFromImage(image)).tolist()) != {0, 1}:
                raise DataError(f"{path}: expected labels 0 and 1")


def prepare(cache: Path = WORK) -> Path:
    """Fetch (if needed), extract and verify; return the folder of the volumes."""
    folder = extract(fetch_archive(cache), cache)
    verify(folder)
    return folder


def case(folder: Path, name: str) -> tuple[sitk.Image, sitk.Image]:
    """One case's image (float32) and its lesion label (uint8 0/1)."""
    image = sitk.ReadImage(str(folder / f"{name}_image.nrrd"), sitk.sitkFloat32)
    return image, sitk.Cast(sitk.ReadImage(str(folder / f"{name}_label.nrrd")), sitk.sitkUInt8)


def main() -> int:
    return prepare_main(prepare, __doc__.splitlines()[0])


if __name__ == "__main__":
    sys.exit(main())
