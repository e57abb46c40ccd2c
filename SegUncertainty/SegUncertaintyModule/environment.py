"""Where the module runs: the Slicer version it needs, and the Python and library the child process uses."""

from __future__ import annotations

import importlib.util
import shutil
import sys
from pathlib import Path

import slicer
from slicer.i18n import tr as _

MINIMUM_SLICER = (5, 12)  # launchConsoleProcess(blocking=False) arrived in 5.12
MODULE_DIR = Path(__file__).parent.parent  # the folder of SegUncertainty.py


def library_dir() -> str:
    """The folder that holds SegUncertaintyLib (installed beside the module), for the child process."""
    spec = importlib.util.find_spec("SegUncertaintyLib")
    return str(Path(spec.origin).parent.parent) if spec and spec.origin else str(MODULE_DIR)


def python_executable() -> str:
    return shutil.which("PythonSlicer") or sys.executable


def slicerVersionProblem() -> str | None:
    """A message when this Slicer is older than MINIMUM_SLICER; None when it is recent enough."""
    version = (int(slicer.app.majorVersion), int(slicer.app.minorVersion))
    if version >= MINIMUM_SLICER:
        return None
    return _("SegUncertainty needs Slicer {need} or later; this is Slicer {have}. Please update Slicer.").format(
        need="{}.{}".format(*MINIMUM_SLICER), have="{}.{}".format(*version))
