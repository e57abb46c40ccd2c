"""Command line: ``seguncertainty segment``, ``cohort``, ``send``, ``evaluate``, ``models`` and ``calibrate``
(one module each; what they share is in ``common``).

Exit codes: 0 success, 2 usage, 3 bad input image, 4 model problem, 5 output not writable or not
ours to replace, 6 out of memory, 7 a PACS failed (unreachable, timeout, TLS, refused, series changed),
8 a cohort finished but some of its cases failed (each recorded in its worklist), 130 cancelled
(SIGINT/SIGTERM), 1 unexpected error. Every error is one line on stderr, ``seguncertainty: error: ...``;
no traceback.
"""

from __future__ import annotations

import argparse
import logging
import os
import sys
import warnings

from .. import __version__
from ..core.errors import CANCELLED_MESSAGE, CancelledError, ResourceError, SegUncertaintyError
from . import calibrate, cohort, evaluate, models, pacs, segment
from .common import Parser

# sub-command -> its module (add_parser(sub), command(args) -> exit code), in the order --help lists them
COMMANDS = {"segment": segment, "cohort": cohort, "send": pacs, "evaluate": evaluate, "models": models,
            "calibrate": calibrate}


def parser() -> argparse.ArgumentParser:
    """The whole command line's parser (errors raise UsageError: one line, exit 2)."""
    top = Parser(prog="seguncertainty", description=__doc__.splitlines()[0])
    top.add_argument("--version", action="version", version=f"%(prog)s {__version__}")
    sub = top.add_subparsers(dest="command", required=True)
    for module in COMMANDS.values():
        module.add_parser(sub)
    return top


def _one_line(text: str) -> str:
    return " ".join(str(text).split()) or "no details"


def main(argv: list[str] | None = None, process_entry: bool = False) -> int:
    """Run one command; return its exit code. Every failure is one line on stderr, never a traceback.
    ``process_entry``: called by :func:`run`, this process runs only this command (see segment.command)."""
    logging.basicConfig(level=logging.WARNING, format="seguncertainty: %(message)s")
    if not sys.warnoptions:  # libraries' deprecation notices (MONAI's FutureWarnings) are for developers; -W wins
        warnings.filterwarnings("ignore", category=FutureWarning)
        warnings.filterwarnings("ignore", category=DeprecationWarning)
    try:
        args = parser().parse_args(argv)
        args.process_entry = process_entry
        return COMMANDS[args.command].command(args)
    except SegUncertaintyError as exc:
        code, message = exc.exit_code, str(exc)
    except (KeyboardInterrupt, CancelledError):
        code, message = CancelledError.exit_code, CANCELLED_MESSAGE
    except MemoryError:
        code, message = ResourceError.exit_code, str(ResourceError("Out of memory; nothing was written"))
    except Exception as exc:  # a bug or an unforeseen environment problem: still one line, exit 1
        code, message = 1, f"unexpected {type(exc).__name__}: {exc} (nothing was written; please report this)"
    print(f"seguncertainty: error: {_one_line(message)}", file=sys.stderr)
    return code


def run() -> None:
    """The process entry (console script and ``python -m``): main(); after ``segment``, and after a cancel of
    any command, the process ends without the interpreter's teardown (about 1 s of freeing torch's and
    MONAI's state) once its outputs are published (or its staging removed) and stdout and stderr flushed.
    Other commands exit normally (Ray and Dask clean up at exit)."""
    argv = sys.argv[1:]
    segment_command = argv[:1] == ["segment"]
    code = main(argv, process_entry=True)
    if segment_command or code == CancelledError.exit_code:
        logging.shutdown()
        sys.stdout.flush()
        sys.stderr.flush()
        os._exit(code)
    sys.exit(code)
