"""``seguncertainty evaluate``: run folders against reference segmentations -> a report folder."""

from __future__ import annotations

import argparse
import logging
import os
import sys
from pathlib import Path

from ..core.errors import InputImageError


def add_parser(sub) -> None:
    ev = sub.add_parser("evaluate", help="compare segment outputs with reference segmentations")
    ev.add_argument("predictions", nargs="+",
                    help="folders of case sub-folders written by 'segment' (one folder per method)")
    ev.add_argument("--references", required=True, help="folder with <case>.nii.gz|.nrrd reference labelmaps")
    ev.add_argument("--out", required=True, help="report folder")
    ev.add_argument("--ood", default=None, help="text file naming the out-of-distribution cases, one per line")
    ev.add_argument("--masks", default=None,
                    help="folder with <case>.nii.gz|.nrrd region masks: calibration also inside each mask")
    ev.add_argument("--labels", type=parse_labels, default=None,
                    help="label names for case folders of plain volumes without manifest.json, e.g. 1=liver,2=tumour")


def parse_labels(text: str) -> dict[int, str]:
    """``1=liver,2=tumour`` -> {1: "liver", 2: "tumour"}; argparse error message (exit 2) on bad syntax, a
    value below 1 (0 is the background), an empty or repeated name, or a repeated value."""
    try:
        pairs = [item.split("=", 1) for item in text.split(",") if item.strip()]
        # an ASCII locale hands non-ASCII arguments over with surrogate escapes: read them as UTF-8
        labels = {int(value): os.fsencode(name).decode("utf-8", "replace").strip() for value, name in pairs}
    except ValueError as exc:
        raise argparse.ArgumentTypeError(f"--labels expects VALUE=NAME[,VALUE=NAME...], got '{text}'") from exc
    names = list(labels.values())
    if not labels or len(labels) != len(pairs) or min(labels) < 1 or "" in names or len(set(names)) != len(names):
        raise argparse.ArgumentTypeError(f"--labels expects distinct values from 1 up with distinct, non-empty "
                                         f"names (0 is the background), got '{text}'")
    return labels


def command(args) -> int:
    from ..evaluation.case_folder import method_names, read_ood_list
    from ..evaluation.evaluate import add_calibration_split, evaluate_folder, summarize
    from ..evaluation.report import report_folder, write_report

    references = Path(args.references)
    folders = [Path(p) for p in args.predictions]
    for what, path in [("--references", references), ("--masks", args.masks and Path(args.masks)), *(
            ("prediction folder", p) for p in folders)]:
        if path and not path.is_dir():
            raise InputImageError(f"{what} {path} is not a folder" if path.exists() else f"{what} {path} not found")
    ood = read_ood_list(Path(args.ood), folders) if args.ood else None
    masks = Path(args.masks) if args.masks else None
    methods = method_names(folders)
    with report_folder(args.out) as out:  # lock and check --out before the long part
        summaries, rows = {}, []
        for folder, method in zip(folders, methods, strict=True):
            results, ood_scores, notes = evaluate_folder(folder, references, args.labels, masks, ood)
            for note in notes:
                logging.warning(note)
            summaries[method] = summarize(results, ood_scores, notes)
            rows += [{"method": method, **r.row} for r in results]
        add_calibration_split(summaries, rows)
        report = write_report(summaries, rows, out)
    print(f"Wrote {report}", file=sys.stderr)
    return 0
