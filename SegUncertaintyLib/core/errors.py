"""Errors a user can act on, and the command line's exit codes: each class carries its own; 0 is success,
1 an unexpected error (a bug), and COHORT_CASES_FAILED a cohort that ran but some of whose cases failed.
Each message names the problem. Standard library only (the Slicer glue reads the codes)."""

COHORT_CASES_FAILED = 8  # exit code: the cohort ran, some cases failed (each recorded in its worklist)


class SegUncertaintyError(Exception):
    """Base class: a problem with the user's input, model or environment (not a bug)."""

    exit_code = 1


class InputImageError(SegUncertaintyError):
    """The input volume cannot be read or is unusable (wrong dimension, NaN, constant, ...)."""

    exit_code = 3


class ModelError(SegUncertaintyError):
    """The model cannot be found, read or used with the requested method."""

    exit_code = 4


class ChecksumError(ModelError):
    """A weight file does not match the sha256 written in its model card."""


class OutputError(SegUncertaintyError):
    """The output folder cannot be created or written."""

    exit_code = 5


class ResourceError(SegUncertaintyError):
    """Out of memory even with the smallest batch."""

    exit_code = 6


CANCELLED_MESSAGE = "Cancelled by the user; nothing was written"


class PacsError(SegUncertaintyError):
    """A PACS (DICOMweb or DIMSE node) cannot be reached, times out, refuses the request (401, 403, 409) or
    changes a series while it is read. Nothing local is deleted. ``stored``: the objects a store had
    completed (or found already there) before it failed."""

    exit_code = 7
    stored: int = 0


class CancelledError(SegUncertaintyError):
    """The run was cancelled by the user; nothing was written (the default message)."""

    exit_code = 130

    def __init__(self, message: str = CANCELLED_MESSAGE):
        super().__init__(message)


class UsageError(SegUncertaintyError, ValueError):
    """An option or argument is out of range or inconsistent (also a ValueError for Python callers)."""

    exit_code = 2
