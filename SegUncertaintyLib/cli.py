"""Command line: ``seguncertainty segment`` and ``seguncertainty models``.

Exit codes: 0 success, 2 usage, 3 bad input image, 4 model problem, 5 output not writable,
6 out of memory, 130 cancelled, 1 unexpected error.
"""

from __future__ import annotations

import argparse
import logging
import signal
import sys
from pathlib import Path

from . import __version__
from .errors import CancelledError, SegUncertaintyError
from .inference.sampling import METHODS
from .io.images import check_writable_dir, image_suffix, read_image
from .io.outputs import FORMATS
from .models.loader import DEFAULT_MODEL, available_models, load_model

SAMPLE_DIR = Path(__file__).parent / "sample"
SAMPLE_IMAGE = SAMPLE_DIR / "colin27_t1_2mm.nii.gz"


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="seguncertainty", description=__doc__.splitlines()[0])
    parser.add_argument("--version", action="version", version=f"%(prog)s {__version__}")
    sub = parser.add_subparsers(dest="command", required=True)

    seg = sub.add_parser("segment", help="segment one volume with uncertainty maps and scores")
    seg.add_argument("input", nargs="?", help="image file (NIfTI, NRRD, MHA) or DICOM folder")
    seg.add_argument("--sample", action="store_true", help="run on the bundled sample T1 volume")
    seg.add_argument("--model", default=DEFAULT_MODEL,
                     help="model name, card path, nnU-Net v2 trained-model folder or MONAI bundle folder "
                          "(default: %(default)s)")
    seg.add_argument("--method", default="mc_dropout", choices=METHODS)
    seg.add_argument("--samples", type=int, default=None,
                     help="samples per member: MC dropout passes (default 20) or TTA flips (default 8)")
    seg.add_argument("--out", default=None, help="output folder (default: ./seguncertainty_out/<input name>)")
    seg.add_argument("--format", default="nrrd", choices=FORMATS)
    seg.add_argument("--device", default="auto", choices=("auto", "cuda", "cpu"))
    seg.add_argument("--seed", type=int, default=0)
    seg.add_argument("--overlap", type=float, default=0.5, help="sliding-window overlap in [0, 1)")
    seg.add_argument("--max-batch", type=int, default=8, help="samples per forward pass (memory budget)")
    seg.add_argument("--progress", default="bar", choices=("bar", "json", "none"))
    seg.add_argument("--no-overview", action="store_true", help="skip the overview PNG")
    seg.add_argument("--save-samples", action="store_true",
                     help="also write the per-sample segmentations (bit-packed .npz; for evaluate's GED)")

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

    models = sub.add_parser("models", help="list the bundled and installed models")
    models.add_argument("--verify", action="store_true", help="also check every weight file's sha256")
    return parser


def _input_name(path: Path) -> str:
    suffix = image_suffix(path)
    return path.name[: -len(suffix)] if suffix and path.name.lower().endswith(suffix) else path.name


class _CancelFlag:
    """Set by SIGTERM/SIGINT; the engine polls it between windows."""

    def __init__(self):
        self.set = False
        for sig in (signal.SIGTERM, signal.SIGINT):
            signal.signal(sig, self._handler)

    def _handler(self, *_):
        self.set = True

    def __call__(self) -> bool:
        return self.set


def cmd_segment(args) -> int:
    from .inference.pipeline import segment_image
    from .io.outputs import write_outputs
    from .progress import ProgressReporter

    if args.sample == bool(args.input):
        raise SystemExit("seguncertainty segment: give an INPUT image or --sample (not both)")
    path = SAMPLE_IMAGE if args.sample else Path(args.input)
    out = Path(args.out) if args.out else Path("seguncertainty_out") / _input_name(path)
    check_writable_dir(out)  # fail before the long part
    reporter = ProgressReporter(args.progress)
    cancel = _CancelFlag()
    try:
        reporter("load", 0.0, f"reading {path.name}")
        image = read_image(path)
        model = load_model(args.model)
        reporter("load", 1.0, f"model {model.card.name} {model.card.version}")
        outputs = segment_image(image, model, args.method, args.samples, args.overlap, args.device, args.seed,
                                args.max_batch, reporter, cancel)
        if cancel():
            raise CancelledError("Cancelled by the user; nothing was written")
        reporter("write", 0.0, f"writing to {out}")
        settings = {"overlap": args.overlap, "seed": args.seed, "max_batch": args.max_batch,
                    "device_requested": args.device, "format": args.format}
        manifest = write_outputs(outputs, out, model.card, str(path), settings, args.format,
                                 overview=not args.no_overview, samples=args.save_samples)
        reporter("write", 1.0, "done")
    finally:
        reporter.close()
    for note in outputs.notes:
        logging.warning(note)
    _print_summary(outputs, manifest)
    return 0


def _print_summary(outputs, manifest: Path) -> None:
    print(f"Wrote {manifest.parent} ({outputs.method}, {outputs.n_samples} samples, {outputs.device})",
          file=sys.stderr)
    for name, scores in outputs.scores["classes"].items():
        parts = [f"volume {scores['volume_ml']:.1f} mL"]
        for key in ("cv", "dpw", "ulabelled", "segment_entropy", "diversity"):
            if scores[key] is not None:
                parts.append(f"{key} {scores[key]:.4f}")
        print(f"  {name}: " + ", ".join(parts), file=sys.stderr)
        readings = outputs.scores.get("readings", {}).get(name, {})
        review = [f"{k} ({v['usual_range']})" for k, v in readings.items() if v["reading"] == "review recommended"]
        if readings:
            print(f"  {name}: " + (f"review recommended, outside the model's usual range: {', '.join(review)}"
                                   if review else "all scores within the model's usual range"), file=sys.stderr)


def parse_labels(text: str) -> dict[int, str]:
    """``1=liver,2=tumour`` -> {1: "liver", 2: "tumour"}; argparse error message on bad syntax."""
    try:
        pairs = [item.split("=", 1) for item in text.split(",") if item.strip()]
        return {int(value): name.strip() for value, name in pairs}
    except ValueError as exc:
        raise argparse.ArgumentTypeError(f"--labels expects VALUE=NAME[,VALUE=NAME...], got '{text}'") from exc


def cmd_evaluate(args) -> int:
    from .errors import InputImageError
    from .evaluation.evaluate import add_calibration_split, evaluate_case, find_reference, summarize
    from .evaluation.report import write_report

    references = Path(args.references)
    labels = args.labels
    ood = {line.strip() for line in Path(args.ood).read_text().splitlines() if line.strip()} if args.ood else None
    check_writable_dir(args.out)
    summaries, rows = {}, []
    for folder in map(Path, args.predictions):
        cases = sorted({p.parent for pattern in ("*/manifest.json", "*/segmentation.*") for p in folder.glob(pattern)})
        if not cases:
            raise InputImageError(f"No case folders (with manifest.json or segmentation.<ext>) in {folder}")
        results = []
        for case_dir in cases:
            mask = find_reference(Path(args.masks), case_dir.name) if args.masks else None
            results += evaluate_case(case_dir, find_reference(references, case_dir.name), labels, mask)
        summaries[folder.name] = summarize(results, ood)
        rows += [{"method": folder.name, **r.row} for r in results]
    add_calibration_split(summaries, rows)
    report = write_report(summaries, rows, args.out)
    print(f"Wrote {report}", file=sys.stderr)
    return 0


def cmd_models(args) -> int:
    from .models.card import load_card

    for name, folder in available_models().items():
        card = load_card(folder)
        status = ""
        if args.verify:
            card.verify()
            status = "  sha256 ok"
        print(f"{name}  v{card.version}  {card.task}  methods={','.join(card.methods)}  "
              f"members={len(card.members)}  {folder}{status}")
    return 0


def main(argv: list[str] | None = None) -> int:
    logging.basicConfig(level=logging.WARNING, format="seguncertainty: %(message)s")
    args = _parser().parse_args(argv)
    try:
        return {"segment": cmd_segment, "evaluate": cmd_evaluate, "models": cmd_models}[args.command](args)
    except SegUncertaintyError as exc:
        print(f"seguncertainty: error: {exc}", file=sys.stderr)
        return exc.exit_code
    except ValueError as exc:
        print(f"seguncertainty: error: {exc}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
