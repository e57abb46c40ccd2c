"""Shared fixtures (helpers live in Testing/support) and the markers every test of a folder carries."""

from __future__ import annotations

import os
import sys
from pathlib import Path

import pytest
import SimpleITK as sitk

from Testing.support.phantoms import sphere_phantom
from Testing.support.tiny_models import write_threshold_model

TESTING = Path(__file__).resolve().parent
# The Slicer module's folder, on sys.path as in Slicer: SegUncertainty, SegUncertaintyModule, SegUncertaintyMRML
MODULE_DIR = TESTING.parent / "SegUncertainty"
if str(MODULE_DIR) not in sys.path:
    sys.path.insert(0, str(MODULE_DIR))
# Testing/<folder>/...: markers for every test under the folder (pytestmark in a conftest is not applied)
FOLDER_MARKERS = {"slicer": ("slicer",)}


@pytest.hookimpl(tryfirst=True)  # before -m deselects by marker
def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    """Folder markers; tests marked gpu are skipped without a CUDA device."""
    cuda = None
    for item in items:
        path = Path(str(item.path)).resolve()
        if path.is_relative_to(TESTING):
            for name in FOLDER_MARKERS.get(path.relative_to(TESTING).parts[0], ()):
                item.add_marker(name)
        if item.get_closest_marker("gpu"):
            if cuda is None:
                import torch

                cuda = torch.cuda.is_available()
            if not cuda:
                item.add_marker(pytest.mark.skip(reason="needs a CUDA device"))


@pytest.fixture(scope="session", autouse=True)
def isolated_home(tmp_path_factory):
    """Every test (and every process it starts) sees its own empty $SEGUNCERTAINTY_HOME: no model or
    calibration the developer installed can change a result (a test may still set its own)."""
    previous = os.environ.get("SEGUNCERTAINTY_HOME")
    os.environ["SEGUNCERTAINTY_HOME"] = str(tmp_path_factory.mktemp("seguncertainty_home"))
    yield
    if previous is None:
        os.environ.pop("SEGUNCERTAINTY_HOME", None)
    else:
        os.environ["SEGUNCERTAINTY_HOME"] = previous


@pytest.fixture
def phantom() -> sitk.Image:
    return sphere_phantom()


@pytest.fixture
def threshold_model(tmp_path) -> Path:
    return write_threshold_model(tmp_path / "threshold_model")


@pytest.fixture
def mrml_scene(tmp_path):
    """A real MRML scene from slicer-core, set up as Slicer's application does (see slicer_headless)."""
    from Testing.support import slicer_headless

    return slicer_headless.new_scene(tmp_path / "slicer_home")


@pytest.fixture(scope="module")
def head_run(tmp_path_factory):
    """The command line run once on the synthetic head (the module's stand-in input); returns (input file,
    output folder)."""
    import sys

    import slicer
    from SegUncertaintyModule import process, scenario
    from SegUncertaintyMRML import volumes

    from Testing.support import slicer_headless

    folder = tmp_path_factory.mktemp("head")
    slicer_headless.new_scene(folder / "home")
    volume, _ = scenario.add_head_volume(slicer.mrmlScene)
    volumes.write_volume(volume, folder / "input.nrrd")
    scenario.run_command(process.segment_command(sys.executable, str(folder / "input.nrrd"), str(folder / "out"),
                                                 method="ensemble"))
    return folder / "input.nrrd", folder / "out"


def _orthanc(tmp_path_factory, users):
    from Testing.support import orthanc

    if not orthanc.available():
        pytest.skip("needs Debian's orthanc and orthanc-dicomweb (install.sh installs them as root)")
    server = orthanc.Orthanc(tmp_path_factory.mktemp("orthanc"), users).start()
    try:
        yield server
    finally:
        server.stop()


@pytest.fixture
def orthanc_server(tmp_path_factory):
    """A real Orthanc with DICOMweb on free loopback ports, no authentication (Testing/support/orthanc.py)."""
    yield from _orthanc(tmp_path_factory, None)


@pytest.fixture
def orthanc_auth(tmp_path_factory):
    """A real Orthanc requiring HTTP basic authentication as user 'alice', password 's3cret-pw'."""
    yield from _orthanc(tmp_path_factory, {"alice": "s3cret-pw"})


@pytest.fixture
def storage_scp():
    """A pynetdicom storage SCP on a free loopback port (Testing/support/storage_scp.py)."""
    from Testing.support.storage_scp import StorageSCP

    scp = StorageSCP()
    yield scp
    scp.stop()
