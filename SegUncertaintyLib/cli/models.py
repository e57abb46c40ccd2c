"""``seguncertainty models``: list, add, check or remove models."""

from __future__ import annotations

import argparse
import json
import sys

from ..core.errors import ModelError


class _OneLineParser(argparse.ArgumentParser):
    """A sub-command parser whose usage errors are one line on stderr (exit 2)."""

    def error(self, message):
        self.exit(2, f"seguncertainty: error: {self.prog}: {message}\n")


def _model_name(text: str) -> str:
    from ..models.catalog import check_name

    try:
        return check_name(text)
    except ValueError as exc:
        raise argparse.ArgumentTypeError(str(exc)) from exc


def add_parser(sub) -> None:
    """``models [list] [--verify] [--json]``, ``models add PATH [--name NAME]``, ``models check PATH``,
    ``models remove NAME``."""
    models = sub.add_parser("models", help="list, add, check or remove models")
    models.add_argument("--verify", action="store_true", help="also check every weight file's sha256")
    models.add_argument("--json", action="store_true", help="list as JSON")
    actions = models.add_subparsers(dest="models_command", parser_class=_OneLineParser)
    listing = actions.add_parser("list", help="bundled and installed models, broken ones with their reason")
    listing.add_argument("--verify", action="store_true", default=argparse.SUPPRESS,
                         help="also check every weight file's sha256")
    listing.add_argument("--json", action="store_true", default=argparse.SUPPRESS, help="list as JSON")
    add = actions.add_parser("add", help="check a model and install a copy in the user's model folder")
    add.add_argument("path", help="model folder: a model card (card.json with its PyTorch or ONNX weights), an "
                                  "nnU-Net v2 trained-model folder (dataset.json, plans.json, fold_*/) or a MONAI "
                                  "bundle (configs/inference.json or .yaml)")
    add.add_argument("--name", type=_model_name, default=None,
                     help="install under this name (default: the model's own name; an nnU-Net model: "
                          "<dataset>-<configuration>, e.g. Dataset123_Liver-3d_fullres)")
    check = actions.add_parser("check", help="check a model folder against the model contract")
    check.add_argument("path", help="model folder: a model card, an nnU-Net v2 trained-model folder or a MONAI "
                                    "bundle")
    remove = actions.add_parser("remove", help="remove a model installed by 'models add'")
    remove.add_argument("name", help="installed model name")


def command(args) -> int:
    from ..models import catalog

    command = args.models_command or "list"
    if command in ("add", "check"):
        from ..models import manage  # loads models: imports torch
    if command == "add":
        name, folder = manage.add_model(args.path, args.name)
        print(f"Added {name}: {folder}")
        return 0
    if command == "check":
        summary = manage.check_path(args.path)
        print(f"{summary.name}: ok ({summary.format}, {summary.members} member(s), "
              f"methods {','.join(summary.methods)}, labels {', '.join(summary.labels.values())})")
        return 0
    if command == "remove":
        folder, left = catalog.remove_model(args.name)
        kept = f"; kept {len(left)} file(s) it did not create: {', '.join(left)}" if left else ""
        print(f"Removed {args.name} ({folder}){kept}")
        return 0
    entries = catalog.list_models(verify=args.verify)
    if args.json:
        print(json.dumps([e.as_dict() for e in entries], indent=2))
    for e in entries if not args.json else []:
        if e.error:
            print(f"{e.name}  BROKEN ({e.format or 'unknown format'}): {e.error}  {e.folder}")
            continue
        s = e.summary
        status = "  sha256 ok" if args.verify else ""
        version = f"v{s.version}" if s.version[:1].isdigit() else s.version  # "v1.2", "nnU-Net v2 (...)"
        print(f"{e.name}  {version}  {s.task}  format={e.format}  modality={s.modality}  "
              f"labels={','.join(s.labels.values())}  methods={','.join(s.methods)}  members={s.members}  "
              f"{e.folder}{status}")
        for line in calibration_lines(e.name):
            print(f"    {line}")
    broken = [e.name for e in entries if e.error]
    if args.verify and broken:
        print(f"seguncertainty: error: {len(broken)} model(s) failed the check: {', '.join(broken)}", file=sys.stderr)
        return ModelError.exit_code
    return 0


def calibration_lines(model_name: str) -> list[str]:
    """One line per calibration made for ``model_name`` (name match; applying also checks the weights)."""
    from ..calibration.store import list_calibrations

    return [f"calibration {doc['id']}: method {doc['method']}, samples "
            f"{doc['samples'] if doc['samples'] is not None else 'default'}, n = {doc['n']}, alpha = {doc['alpha']}, "
            f"{doc['created'][:10]}" for _, doc in list_calibrations() if doc["model"]["name"] == model_name]
