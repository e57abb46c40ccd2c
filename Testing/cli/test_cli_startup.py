"""Start-up: the command line's parser and the model list are built without torch, MONAI or SimpleITK.

Checked in a fresh interpreter (sys.modules), not timed: timings are in BENCHMARKS.md.
"""

from __future__ import annotations

import json
import subprocess
import sys

HEAVY = ("torch", "monai", "SimpleITK")


def _heavy_modules_after(code: str) -> list[str]:
    probe = code + f"\nimport json, sys\nprint(json.dumps([m for m in {HEAVY!r} if m in sys.modules]))"
    done = subprocess.run([sys.executable, "-c", probe], capture_output=True, text=True, check=True)
    return json.loads(done.stdout.strip().splitlines()[-1])


def test_cli_import_and_parser_do_not_import_heavy_libraries():
    code = "import SegUncertaintyLib.cli as cli\nargs = cli._parser().parse_args(['segment', '--sample'])"
    assert _heavy_modules_after(code) == []


def test_help_does_not_import_heavy_libraries():
    code = ("import contextlib, io, SegUncertaintyLib.cli as cli\n"
            "with contextlib.redirect_stdout(io.StringIO()) as out:\n"
            "    try:\n        cli.main(['--help'])\n    except SystemExit:\n        pass\n"
            "assert 'segment' in out.getvalue()")
    assert _heavy_modules_after(code) == []


def test_models_list_does_not_import_torch_for_card_models():
    code = ("import contextlib, io, SegUncertaintyLib.cli as cli\n"
            "with contextlib.redirect_stdout(io.StringIO()) as out:\n"
            "    assert cli.main(['models']) == 0\n"
            "assert 'brainmask-t1' in out.getvalue()")
    assert _heavy_modules_after(code) == []
