"""Command line: ``seguncertainty segment``, ``cohort``, ``evaluate`` and ``models``.

Exit codes: 0 success, 2 usage, 3 bad input image, 4 model problem, 5 output not writable or not
ours to replace, 6 out of memory, 8 a cohort finished but some of its cases failed (each recorded in
its worklist), 130 cancelled (SIGINT/SIGTERM), 1 unexpected error. Every error is one line on stderr,
``seguncertainty: error: ...``; no traceback.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import logging
import os
import signal
import sys
import warnings
from pathlib import Path

from . import __version__
from .cohort.executors import EXECUTORS
from .core.errors import (
    CANCELLED_MESSAGE,
    COHORT_CASES_FAILED,
    CancelledError,
    InputImageError,
    ModelError,
    ResourceError,
    SegUncertaintyError,
    UsageError,
)
from .core.options import DEVICES
from .core.vocabulary import DEFAULT_METHOD, DEFAULT_MODEL, MAP_CHOICES, MAP_DTYPES, METHODS, OUTPUT_FORMATS

# Packages MONAI imports whenever they are installed (its package __init__ loads every submodule) that a card
# model's run never uses: pytorch-ignite (dev-only here; 0.7 s, it pulls in torch.distributed) and scikit-image.
# Whole-volume formats may need them (nnU-Net resamples with scikit-image), so only card runs leave them out.
UNUSED_BY_CARD_RUNS = ("ignite", "skimage")

SAMPLE_DIR = Path(__file__).parent / "sample"
SAMPLE_IMAGE = SAMPLE_DIR / "colin27_t1_2mm.nii.gz"


class _Parser(argparse.ArgumentParser):
    """argparse with one-line errors (exit 2), as every other error of the command line."""

    def error(self, message: str):
        raise UsageError(f"{self.prog}: {message} (see --help)")


def _parser() -> argparse.ArgumentParser:
    parser = _Parser(prog="seguncertainty", description=__doc__.splitlines()[0])
    parser.add_argument("--version", action="version", version=f"%(prog)s {__version__}")
    sub = parser.add_subparsers(dest="command", required=True)

    seg = sub.add_parser("segment", help="segment one volume with uncertainty maps and scores")
    seg.add_argument("input", nargs="?", help="image file (NIfTI, NRRD, MHA) or DICOM folder")
    seg.add_argument("--sample", action="store_true", help="run on the bundled sample T1 volume")
    seg.add_argument("--series", default=None, metavar="UID",
                     help="SeriesInstanceUID to read from a DICOM folder holding several series")
    seg.add_argument("--out", default=None,
                     help="output folder (default: ./seguncertainty_out/<input name>-<hash of its path>)")
    add_segment_options(seg)

    cohort = sub.add_parser("cohort", help="segment many volumes; write a review worklist ranked by uncertainty")
    cohort.add_argument("inputs", nargs="+", metavar="INPUT",
                        help="image files (NIfTI, NRRD, MHA), folders (searched recursively for those and for "
                             "DICOM series) and CSV files with a 'path' column (optional 'case' column)")
    cohort.add_argument("--out", required=True, help="cohort folder: one sub-folder per case and worklist.csv")
    add_segment_options(cohort)
    cohort.add_argument("--workers", type=int, default=1, help="cases run at the same time (default: %(default)s)")
    cohort.add_argument("--executor", default="local", choices=EXECUTORS,
                        help="local worker processes, or a Ray or Dask cluster (default: %(default)s)")
    cohort.add_argument("--address", default=None,
                        help="address of a running Ray or Dask cluster to join (default: start a local one)")

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

    _add_models_parser(sub)
    return parser


def add_segment_options(parser: argparse.ArgumentParser) -> None:
    """The model, method, sampling, output and progress options of ``segment`` (and ``cohort``)."""
    parser.add_argument("--model", default=DEFAULT_MODEL,
                        help="model name, card path, nnU-Net v2 trained-model folder or MONAI bundle folder "
                             "(default: %(default)s)")
    parser.add_argument("--method", default=DEFAULT_METHOD, choices=METHODS,
                        help="uncertainty method: one pass (softmax), MC dropout, ensemble, test-time flips or a "
                             "combination (default: %(default)s)")
    parser.add_argument("--samples", type=int, default=None,
                        help="samples per member: MC dropout passes (default 20) or TTA flip combinations "
                             "(default: all the model declares, at most 8)")
    parser.add_argument("--format", default="nrrd", choices=OUTPUT_FORMATS,
                        help="image format of the written volumes (default: %(default)s)")
    parser.add_argument("--device", default="auto", choices=DEVICES,
                        help="auto: a CUDA GPU when there is one, else the CPU; cuda: exit 2 when there is none "
                             "(default: %(default)s)")
    parser.add_argument("--seed", type=int, default=0,
                        help="random seed of the dropout masks: the same seed gives the same outputs "
                             "(default: %(default)s)")
    parser.add_argument("--overlap", type=float, default=0.5,
                        help="sliding-window overlap in [0, 1) (default: %(default)s)")
    parser.add_argument("--max-batch", type=int, default=8,
                        help="samples per forward pass (memory budget; default: %(default)s)")
    parser.add_argument("--progress", default="bar", choices=("bar", "json", "none"),
                        help="bar: on stderr (plain lines when stderr is not a terminal); json: one JSON line "
                             "per step on stdout, for programs (default: %(default)s)")
    parser.add_argument("--no-overview", action="store_true", help="skip the overview PNG")
    parser.add_argument("--maps", type=parse_maps, default=None, metavar="NAME[,NAME...]",
                        help=f"maps to write, from {','.join(MAP_CHOICES)} (probability: every class's probability "
                             "map; default: all); the segmentation and scores are always written")
    parser.add_argument("--map-dtype", default="float32", choices=MAP_DTYPES,
                        help="precision of the maps and probabilities: float16 rounds each value to ~3 significant "
                             "digits (steps of at most 0.0005 on 0-1 maps), stored as float32, compressing "
                             "better (default: %(default)s)")
    parser.add_argument("--tolerance", type=float, default=None, metavar="E",
                        help="MC dropout: sample in rounds until the maps' Monte Carlo error (99th percentile near "
                             "the segment, scores.json monte_carlo_error) is at most E; --samples is then the "
                             "maximum (default: a fixed --samples)")
    parser.add_argument("--compress", action=argparse.BooleanOptionalAction, default=True,
                        help="gzip the written volumes: lossless, about 8 %% smaller float maps for longer writes "
                             "(default: compress)")
    parser.add_argument("--save-samples", action="store_true",
                        help="also write the per-sample segmentations (bit-packed .npz; for evaluate's GED)")
    parser.add_argument("--dicom", action="store_true",
                        help="also write DICOM SEG, Parametric Maps and a TID 1500 report in dicom/ (the input must "
                             "be a DICOM series; README 'Hospital use')")


def _input_name(path: Path) -> str:
    from .io.images import image_suffix

    suffix = image_suffix(path)
    return path.name[: -len(suffix)] if suffix and path.name.lower().endswith(suffix) else path.name


def default_out(path: Path) -> Path:
    """``seguncertainty_out/<name>-<hash of the absolute input path>``: same input, same folder; two
    inputs with one file name in different folders, different folders."""
    digest = hashlib.sha256(os.fsencode(os.path.abspath(path))).hexdigest()[:8]
    return Path("seguncertainty_out") / f"{_input_name(path)}-{digest}"


class _CancelFlag:
    """Set by SIGTERM/SIGINT (handlers installed for the life of the object, then restored).

    Polled before and after every forward pass, between pipeline stages and between written files.
    """

    def __init__(self):
        self.set = False
        self._previous = {sig: signal.signal(sig, self._handler) for sig in (signal.SIGTERM, signal.SIGINT)}

    def _handler(self, *_):
        self.set = True

    def __call__(self) -> bool:
        return self.set

    def check(self) -> None:
        if self.set:
            raise CancelledError()

    def restore(self) -> None:
        for sig, handler in self._previous.items():
            signal.signal(sig, handler)


def check_segment_options(args):
    """The checked SegmentOptions of ``segment``; UsageError (exit 2) before anything is read."""
    from .core.options import SegmentOptions

    if args.sample == bool(args.input):
        raise UsageError("segment: give an INPUT image or --sample (not both)")
    return SegmentOptions.from_args(args).check()


def check_before_loading(options, path: Path):
    """What can be refused in a fraction of a second, before torch is imported or weights are loaded: a
    missing input (exit 3) and a sample count a card model cannot run (exit 2, or 4 for an ensemble of one).
    Returns the model's card (None: a whole-volume format)."""
    from .models.catalog import check_card_plan

    if not path.exists():
        raise InputImageError(f"Input image not found: {path}")
    return check_card_plan(options.model, options.method, options.samples)


def cmd_segment(args) -> int:
    from .io.publish import output_folder

    options = check_segment_options(args)
    path = SAMPLE_IMAGE if args.sample else Path(args.input)
    card = check_before_loading(options, path)
    if card is not None and args.process_entry:
        _leave_out_unused_imports()
    if options.dicom:
        from .results.run_folder import check_dicom_input

        check_dicom_input(path, None)
    out = Path(args.out) if args.out else default_out(path)
    cancel = _CancelFlag()
    reporter = None
    try:
        # lock, leftovers of killed runs, refusal: before the heavy imports; large intermediate data and the
        # output volumes of whole-volume models wait in the scratch folder beside the output
        with output_folder(out) as folder, folder.scratch() as scratch:
            from .core.progress import ProgressReporter
            from .inference.segment import segment_image
            from .inference.sliding_window import pick_device
            from .io.dicom import SERIES_UID_TAG, series_slice_files
            from .io.images import read_image
            from .models.loader import load_model
            from .results.run_folder import write_outputs

            pick_device(options.device)  # --device cuda without a GPU: exit 2 before the model loads
            _choose_threads()
            reporter = ProgressReporter(args.progress)
            reporter("load", 0.0, f"reading {path.name}")
            image = read_image(path, args.series)
            cancel.check()
            model = load_model(options.model)
            reporter("load", 1.0, f"model {model.description.name} {model.description.version}")
            cancel.check()
            outputs = segment_image(image, model, options, reporter, cancel, scratch)
            cancel.check()
            reporter("write", 0.0, f"writing to {out}")
            settings = options.settings(image.GetMetaData(SERIES_UID_TAG) if path.is_dir() else None)
            sources = series_slice_files(path, args.series) if options.dicom else None
            manifest = write_outputs(outputs, folder, model.description, str(path), options, settings, cancel,
                                     sources)
            reporter("write", 1.0, "done")
    finally:
        if reporter is not None:
            reporter.close()
        cancel.restore()
    for note in outputs.notes:
        logging.warning(note)
    _print_summary(outputs, manifest)
    return 0


def _choose_threads() -> None:
    """torch's CPU threads from the cores free now (inference.budget.free_cores), unless OMP_NUM_THREADS or
    MKL_NUM_THREADS says how many (a cohort's workers, or the user)."""
    if not (os.environ.get("OMP_NUM_THREADS") or os.environ.get("MKL_NUM_THREADS")):
        import torch

        from .inference.budget import free_cores

        torch.set_num_threads(free_cores())


def cmd_cohort(args) -> int:
    from .cohort.run import run_cohort
    from .core.options import SegmentOptions

    options = SegmentOptions.from_args(args).check()
    cancel = _CancelFlag()
    try:
        rows = run_cohort(args.inputs, args.out, options, args.workers, args.executor, args.address,
                          args.progress, cancel)
    finally:
        cancel.restore()
    failed = [row["case"] for row in rows if row["status"] == "failed"]
    counts = {status: sum(row["status"] == status for row in rows) for status in ("done", "skipped", "failed")}
    print(f"Wrote {Path(args.out) / 'worklist.csv'}: {counts['done']} done, {counts['skipped']} skipped, "
          f"{counts['failed']} failed", file=sys.stderr)
    if failed:
        shown = ", ".join(failed[:5]) + (f" and {len(failed) - 5} more" if len(failed) > 5 else "")
        print(f"seguncertainty: error: {len(failed)} case(s) failed (errors in worklist.csv): {shown}",
              file=sys.stderr)
        return COHORT_CASES_FAILED
    return 0


def plural(n: int, noun: str) -> str:
    """``1 sample``, ``2 samples``."""
    return f"{n} {noun}{'' if n == 1 else 's'}"


def _print_summary(outputs, manifest: Path) -> None:
    """The run's result on stdout: the folder, then per class its volume, scores and their readings."""
    from .inference.scores import NO_RANGE, NO_SEGMENTATION, REVIEW, SUBJECT_SCORES

    print(f"Wrote {manifest.parent} ({outputs.method}, {plural(outputs.n_samples, 'sample')}, {outputs.device})")
    error = outputs.scores.get("monte_carlo_error")
    if error:
        print(f"  Monte Carlo error (99th percentile near the segment): probability {error['probability']:.4f}, "
              f"entropy {error['entropy']:.4f}")
    for name, scores in outputs.scores["classes"].items():
        parts = [f"volume {scores['volume_ml']:.1f} mL"]
        for key in SUBJECT_SCORES:
            if scores[key] is not None:
                parts.append(f"{key} {scores[key]:.4f}")
        print(f"  {name}: " + ", ".join(parts))
        if scores.get("empty_prediction"):
            print(f"  {name}: {NO_SEGMENTATION}")
            continue
        readings = outputs.scores.get("readings", {}).get(name, {})
        review = [f"{k} ({v['usual_range']})" for k, v in readings.items() if v["reading"] == REVIEW]
        if readings and all(v["reading"] == NO_RANGE for v in readings.values()):
            print(f"  {name}: {NO_RANGE} (the model card's ranges were measured with "
                  f"{outputs.scores['reference_measured_with']})")
        elif readings:
            print(f"  {name}: " + (f"review recommended, outside the model's usual range: {', '.join(review)}"
                                   if review else "all scores within the model's usual range"))


def parse_maps(text: str) -> tuple[str, ...]:
    """``entropy,probability`` -> ("entropy", "probability"); argparse error (exit 2) on an unknown or
    repeated name, or none."""
    names = tuple(n.strip() for n in text.split(",") if n.strip())
    unknown = [n for n in names if n not in MAP_CHOICES]
    if not names or unknown or len(set(names)) != len(names):
        raise argparse.ArgumentTypeError(f"--maps expects distinct names from {','.join(MAP_CHOICES)}, got '{text}'")
    return names


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


def cmd_evaluate(args) -> int:
    from .evaluation.evaluate import add_calibration_split, evaluate_folder, method_names, read_ood_list, summarize
    from .evaluation.report import report_folder, write_report

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


# -- seguncertainty models ------------------------------------------------------------------------------
class _OneLineParser(argparse.ArgumentParser):
    """A sub-command parser whose usage errors are one line on stderr (exit 2)."""

    def error(self, message):
        self.exit(2, f"seguncertainty: error: {self.prog}: {message}\n")


def _model_name(text: str) -> str:
    from .models.catalog import check_name

    try:
        return check_name(text)
    except ValueError as exc:
        raise argparse.ArgumentTypeError(str(exc)) from exc


def _add_models_parser(sub) -> None:
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
    add.add_argument("--name", type=_model_name, default=None, help="install under this name")
    check = actions.add_parser("check", help="check a model folder against the model contract")
    check.add_argument("path", help="model folder: a model card, an nnU-Net v2 trained-model folder or a MONAI "
                                    "bundle")
    remove = actions.add_parser("remove", help="remove a model installed by 'models add'")
    remove.add_argument("name", help="installed model name")


def cmd_models(args) -> int:
    from .models import catalog

    command = args.models_command or "list"
    if command in ("add", "check"):
        from .models import manage  # loads models: imports torch
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
        print(f"{e.name}  v{s.version}  {s.task}  format={e.format}  modality={s.modality}  "
              f"labels={','.join(s.labels.values())}  methods={','.join(s.methods)}  members={s.members}  "
              f"{e.folder}{status}")
    broken = [e.name for e in entries if e.error]
    if args.verify and broken:
        print(f"seguncertainty: error: {len(broken)} model(s) failed the check: {', '.join(broken)}", file=sys.stderr)
        return ModelError.exit_code
    return 0


def _one_line(text: str) -> str:
    return " ".join(str(text).split()) or "no details"


def main(argv: list[str] | None = None, process_entry: bool = False) -> int:
    """Run one command; return its exit code. Every failure is one line on stderr, never a traceback.
    ``process_entry``: called by :func:`run`, this process runs only this command (see cmd_segment)."""
    logging.basicConfig(level=logging.WARNING, format="seguncertainty: %(message)s")
    if not sys.warnoptions:  # libraries' deprecation notices (MONAI's FutureWarnings) are for developers; -W wins
        warnings.filterwarnings("ignore", category=FutureWarning)
        warnings.filterwarnings("ignore", category=DeprecationWarning)
    try:
        args = _parser().parse_args(argv)
        args.process_entry = process_entry
        commands = {"segment": cmd_segment, "cohort": cmd_cohort, "evaluate": cmd_evaluate, "models": cmd_models}
        return commands[args.command](args)
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


def _leave_out_unused_imports() -> None:
    """Make :data:`UNUSED_BY_CARD_RUNS` unimportable in this process (before MONAI is imported), so MONAI's
    optional imports skip them. Only for the process entry: it would also hide them from later callers."""
    for name in UNUSED_BY_CARD_RUNS:
        sys.modules.setdefault(name, None)  # None: "import name" raises ImportError


def run() -> None:
    """The process entry (console script and ``python -m``): main(); after ``segment`` the process ends
    without the interpreter's teardown (about 1 s of freeing torch's and MONAI's state) once its outputs are
    published and stdout and stderr flushed. Other commands exit normally (Ray and Dask clean up at exit)."""
    argv = sys.argv[1:]
    segment = argv[:1] == ["segment"]
    code = main(argv, process_entry=True)
    if segment:
        logging.shutdown()
        sys.stdout.flush()
        sys.stderr.flush()
        os._exit(code)
    sys.exit(code)


if __name__ == "__main__":
    run()
