"""Image headers are checked before any voxel is allocated: memory, voxel count, spacing, origin and an
orthonormal direction, the same way for NRRD, NIfTI and MHA; oblique grids round-trip through every format."""

import subprocess
import sys
import textwrap

import nibabel as nib
import numpy as np
import pytest
import SimpleITK as sitk

from SegUncertaintyLib import cli
from SegUncertaintyLib.core.errors import InputImageError
from SegUncertaintyLib.io.header import MAX_VOXELS_ENV, same_grid
from SegUncertaintyLib.io.images import read_image, validate_image
from Testing.support.phantoms import sphere_phantom

OBLIQUE = tuple(sitk.VersorTransform((0.2, 0.3, 0.9), 0.4).GetMatrix())
SHEAR = (1.0, 0.3, 0.0, 0.0, 1.0, 0.0, 0.0, 0.0, 1.0)


def nrrd_header(path, sizes="1200 1200 1200", directions="(1,0,0) (0,1,0) (0,0,1)", origin="(0,0,0)"):
    """A NRRD header (float voxels) followed by 800 bytes: a ~1 KB file claiming ``sizes`` voxels."""
    path.write_bytes(f"NRRD0004\ntype: float\ndimension: 3\nspace: left-posterior-superior\nsizes: {sizes}\n"
                     f"space directions: {directions}\nendian: little\nencoding: raw\nspace origin: {origin}\n\n"
                     .encode() + b"\0" * 800)
    return path


def mha_header(path, spacing="1 1 1", offset="0 0 0", size="10 10 10"):
    """A MetaImage with its voxels (random floats) inline."""
    data = np.random.default_rng(0).random(np.prod([int(s) for s in size.split()])).astype("<f4").tobytes()
    path.write_bytes(f"ObjectType = Image\nNDims = 3\nBinaryData = True\nBinaryDataByteOrderMSB = False\n"
                     f"DimSize = {size}\nElementType = MET_FLOAT\nElementSpacing = {spacing}\nOffset = {offset}\n"
                     "ElementDataFile = LOCAL\n".encode() + data)
    return path


def nifti(path, affine, qform=True):
    """A NIfTI-1 file with ``affine`` as sform (and as qform, which nibabel then makes orthonormal)."""
    header = nib.Nifti1Header()
    header.set_sform(affine, code=1)
    if qform:
        header.set_qform(affine, code=1)
    image = nib.Nifti1Image(np.random.default_rng(0).random((10, 10, 10)).astype(np.float32), None, header)
    nib.save(image, str(path))
    return path


def test_huge_header_is_refused_before_anything_is_allocated(tmp_path):
    """1 KB NRRD claiming 1200^3 floats (6.9 GB): refused with address space capped 2 GB above what the
    process already maps, so reading the voxels would fail with an allocation error instead."""
    path = nrrd_header(tmp_path / "huge.nrrd")
    assert path.stat().st_size < 2000
    script = textwrap.dedent(f"""
        import resource, sys
        from SegUncertaintyLib.core.errors import InputImageError
        from SegUncertaintyLib.io.images import read_image
        vm = [int(l.split()[1]) * 1024 for l in open("/proc/self/status") if l.startswith("VmSize:")][0]
        resource.setrlimit(resource.RLIMIT_AS, (vm + (2 << 30), vm + (2 << 30)))
        try:
            read_image({str(path)!r})
        except InputImageError as exc:
            print(exc)
    """)
    proc = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0, proc.stderr
    assert "1200 x 1200 x 1200 = 1,728,000,000 voxels, more than the limit" in proc.stdout
    assert MAX_VOXELS_ENV in proc.stdout


def test_voxel_cap_and_memory_budget(tmp_path, monkeypatch):
    small = tmp_path / "small.nrrd"
    sitk.WriteImage(sphere_phantom(), str(small))
    assert read_image(small).GetSize() == (40, 36, 32)
    monkeypatch.setenv(MAX_VOXELS_ENV, "10000")
    limit = f"40 x 36 x 32 = 46,080 voxels, more than the limit of 10,000 .*{MAX_VOXELS_ENV}"
    with pytest.raises(InputImageError, match=limit):
        read_image(small)
    monkeypatch.setenv(MAX_VOXELS_ENV, "many")
    with pytest.raises(InputImageError, match="not a positive number"):
        read_image(small)
    # with the cap lifted, 3000^3 floats (216 GB) are more than half the memory of any machine running this
    monkeypatch.setenv(MAX_VOXELS_ENV, "1e12")
    with pytest.raises(InputImageError, match=r"needing 216\.0 GB to read, more than 50% of the available memory"):
        read_image(nrrd_header(tmp_path / "bigger.nrrd", sizes="3000 3000 3000"))


@pytest.mark.parametrize("make, message", [
    (lambda p: mha_header(p / "a.mha", spacing="0 1 1"), r"spacing \(0, 1, 1\)"),
    (lambda p: mha_header(p / "a.mha", spacing="-2 1 1"), r"spacing \(-2, 1, 1\)"),
    (lambda p: mha_header(p / "a.mha", spacing="nan 1 1"), "spacing"),
    (lambda p: mha_header(p / "a.mha", spacing="1e6 1 1"), r"spacing \(1e\+06, 1, 1\)"),
    (lambda p: mha_header(p / "a.mha", offset="1e9 0 0"), r"origin \(1e\+09, 0, 0\)"),
    (lambda p: nrrd_header(p / "a.nrrd", "10 10 10", "(1e6,0,0) (0,1,0) (0,0,1)"), "spacing"),
    (lambda p: nrrd_header(p / "a.nrrd", "10 10 10", "(0,0,0) (0,1,0) (0,0,1)"), "spacing"),
    (lambda p: nifti(p / "a.nii.gz", np.diag([1e6, 1, 1, 1])), "spacing"),
    (lambda p: nifti(p / "a.nii.gz", np.diag([0.0, 1, 1, 1]), qform=False), "spacing"),
])
def test_absurd_spacing_or_origin_is_refused(make, message, tmp_path):
    with pytest.raises(InputImageError, match=message):
        read_image(make(tmp_path))


@pytest.mark.parametrize("suffix", [".nrrd", ".mha", ".nii.gz", ".nii"])
def test_sheared_direction_is_refused_in_every_format(suffix, tmp_path):
    """NRRD and MHA store a shear (NRRD rescaled); ITK's NIfTI reader would silently use the orthonormal
    qform instead of the sheared sform: all three are refused alike."""
    path = tmp_path / f"sheared{suffix}"
    if suffix in (".nii.gz", ".nii"):  # with an orthonormal qform (.nii.gz) or none (.nii)
        nifti(path, np.array([[2, 0.6, 0, -10], [0, 2, 0, -20], [0, 0, 3, 5], [0, 0, 0, 1.0]]), suffix == ".nii.gz")
    else:
        image = sphere_phantom()
        image.SetDirection(SHEAR)
        sitk.WriteImage(image, str(path))
    with pytest.raises(InputImageError, match="non-orthonormal"):
        read_image(path)


def test_in_memory_image_with_sheared_or_absurd_grid_is_refused():
    image = sphere_phantom()
    image.SetDirection(SHEAR)
    with pytest.raises(InputImageError, match="non-orthonormal"):
        validate_image(image)
    image = sphere_phantom()
    image.SetSpacing((1e6, 1, 1))
    with pytest.raises(InputImageError, match="spacing"):
        validate_image(image)
    image = sphere_phantom()
    image.SetOrigin((float("nan"), 0, 0))
    with pytest.raises(InputImageError, match="origin"):
        validate_image(image)


@pytest.mark.parametrize("suffix", [".nrrd", ".nii.gz", ".mha"])
@pytest.mark.parametrize("fmt", ["nrrd", "nii.gz"])
def test_oblique_grid_round_trips_through_every_format(suffix, fmt, tmp_path, threshold_model):
    """An oblique, flipped, anisotropic input: read back on its exact grid, and every output of segment
    (in either output format) on that grid too."""
    image = sphere_phantom(size=(20, 18, 16), spacing=(3.0, 3.5, 4.0), direction=OBLIQUE, radius_mm=20.0)
    path = tmp_path / f"oblique{suffix}"
    sitk.WriteImage(image, str(path))
    assert same_grid(read_image(path), image)
    out = tmp_path / "out"
    assert cli.main(["segment", str(path), "--model", str(threshold_model), "--method", "softmax", "--out", str(out),
                     "--format", fmt, "--progress", "none", "--no-overview"]) == 0
    written = sorted(out.glob(f"*.{fmt}"))
    assert len(written) >= 3
    for result in written:
        assert same_grid(sitk.ReadImage(str(result)), image), result.name
