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
    code = "import SegUncertaintyLib.cli as cli\nargs = cli.parser().parse_args(['segment', '--sample'])"
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


def _refused_without_torch(argv: list[str], tmp: str) -> tuple[int, list[str]]:
    code = (f"import os, SegUncertaintyLib.cli as cli\nos.chdir({tmp!r})\nrc = cli.main({argv!r})\n"
            "print(rc)")
    probe = code + f"\nimport json, sys\nprint(json.dumps([m for m in {HEAVY!r} if m in sys.modules]))"
    done = subprocess.run([sys.executable, "-c", probe], capture_output=True, text=True, check=True)
    lines = done.stdout.strip().splitlines()
    return int(lines[-2]), json.loads(lines[-1])


def test_a_missing_input_and_an_impossible_sample_count_are_refused_before_torch(tmp_path):
    """Slow failures (seconds of imports and model loading before the refusal): a missing input (exit 3)
    and more TTA samples than the card's declared flips give (exit 2) are refused without torch, the
    output folder untouched."""
    out = str(tmp_path / "out")
    assert _refused_without_torch(["segment", str(tmp_path / "missing.nii.gz"), "--out", out],
                                  str(tmp_path)) == (3, [])
    assert _refused_without_torch(["segment", "--sample", "--method", "tta", "--samples", "5", "--out", out],
                                  str(tmp_path)) == (2, [])
    assert _refused_without_torch(["segment", "--sample", "--model", "brainmask-t1", "--method", "ensemble+tta",
                                   "--samples", "3", "--out", out], str(tmp_path)) == (2, [])
    assert sorted(p.name for p in tmp_path.iterdir()) == []


def test_library_deprecation_warnings_are_not_shown_to_users_unless_asked_for():
    """MONAI's FutureWarnings cluttered evaluate and bundle runs: the command line silences Future- and
    DeprecationWarnings, unless the user asks for them with -W or PYTHONWARNINGS."""
    code = ("import warnings, contextlib, io, SegUncertaintyLib.cli as cli\n"
            "with contextlib.redirect_stdout(io.StringIO()):\n    cli.main(['models', '--json'])\n"
            "warnings.warn('monai.something is deprecated', FutureWarning)\n")
    quiet = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert "FutureWarning" not in quiet.stderr
    asked = subprocess.run([sys.executable, "-W", "default", "-c", code], capture_output=True, text=True, check=True)
    assert "FutureWarning: monai.something is deprecated" in asked.stderr


def test_help_shows_each_options_default_and_every_model_format():
    import contextlib
    import io

    from SegUncertaintyLib import cli

    def help_of(*argv: str) -> str:
        with contextlib.redirect_stdout(io.StringIO()) as out, contextlib.suppress(SystemExit):
            cli.main([*argv, "--help"])
        return " ".join(out.getvalue().split())

    segment = help_of("segment")
    for shown in ("(default: mc_dropout)", "(default: nrrd)", "(default: auto)", "(default: 0)", "(default: bar)"):
        assert shown in segment
    for command in ("add", "check"):
        assert "nnU-Net v2 trained-model folder" in help_of("models", command) and "MONAI bundle" in \
            help_of("models", command)
