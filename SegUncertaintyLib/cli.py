"""Command line: ``seguncertainty segment``, ``cohort``, ``evaluate``, ``models`` and ``send``.

Exit codes: 0 success, 2 usage, 3 bad input image, 4 model problem, 5 output not writable or not
ours to replace, 6 out of memory, 7 a PACS failed (unreachable, timeout, TLS, refused, series changed),
8 a cohort finished but some of its cases failed (each recorded in its worklist), 130 cancelled
(SIGINT/SIGTERM), 1 unexpected error. Every error is one line on stderr, ``seguncertainty: error: ...``;
no traceback.
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
from .core.options import BACKENDS, DEFAULT_BACKEND, DEVICES, PRECISIONS
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
    cohort.add_argument("inputs", nargs="*", metavar="INPUT",
                        help="image files (NIfTI, NRRD, MHA), folders (searched recursively for those and for "
                             "DICOM series) and CSV files with a 'path' column (optional 'case' column); or none "
                             "with --dicomweb")
    cohort.add_argument("--out", required=True, help="cohort folder: one sub-folder per case and worklist.csv")
    add_segment_options(cohort)
    cohort.add_argument("--workers", type=int, default=1, help="cases run at the same time (default: %(default)s)")
    cohort.add_argument("--executor", default="local", choices=EXECUTORS,
                        help="local worker processes, or a Ray or Dask cluster (default: %(default)s)")
    cohort.add_argument("--address", default=None,
                        help="address of a running Ray or Dask cluster to join (default: start a local one)")
    add_pacs_options(cohort, reading=True)

    send = sub.add_parser("send", help="send the DICOM objects of a run or cohort folder to a PACS")
    send.add_argument("folder", help="a run folder written with --dicom, or a cohort folder")
    add_pacs_options(send, reading=False)

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
    _add_calibrate_parser(sub)
    return parser


def add_backend_options(parser: argparse.ArgumentParser) -> None:
    """--backend and --precision of card models' forward passes (segment, cohort, calibrate)."""
    parser.add_argument("--backend", default=DEFAULT_BACKEND, choices=BACKENDS,
                        help="card models' forward passes: auto picks the fastest backend whose probe on one window "
                             "stays within 0.01 of torch fp32's probabilities (cached per machine and model); "
                             "openvino and onnxruntime run on the CPU (default: %(default)s)")
    parser.add_argument("--precision", default="auto", choices=PRECISIONS,
                        help="auto: fp16 autocast with torch on CUDA, else fp32 (with --backend auto, every "
                             "precision the CPU runs natively is probed); bf16: CPU autocast or OpenVINO; fp16: "
                             "CUDA only (default: %(default)s)")


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
    add_backend_options(parser)
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
    parser.add_argument("--calibration", default="auto", metavar="auto|none|FILE",
                        help="auto: the newest calibration made by 'calibrate' for these weights, method and "
                             "samples (never another); none: off; or a calibration file (default: %(default)s)")


def add_pacs_options(parser: argparse.ArgumentParser, reading: bool) -> None:
    """The PACS options of ``cohort`` (``reading``) and ``send`` (README 'Hospital use')."""
    pacs = parser.add_argument_group("PACS (credentials: SEGUNCERTAINTY_DICOMWEB_USER/_PASSWORD or _TOKEN, or "
                                     "--credentials FILE)")
    pacs.add_argument("--dicomweb", default=None, metavar="URL",
                      help="DICOMweb service root, e.g. http://host:8042/dicom-web" + (
                          ": read the cohort's CT and MR series from it" if reading else ": send to it (STOW-RS)"))
    if reading:
        pacs.add_argument("--study", action="extend", nargs="+", default=[], metavar="UID",
                          help="with --dicomweb: the StudyInstanceUIDs to read")
        pacs.add_argument("--query", action="extend", nargs="+", default=[], metavar="KEY=VALUE",
                          help="with --dicomweb: a QIDO-RS search, e.g. PatientID=123 StudyDate=20240101-20240131")
        pacs.add_argument("--series", action="extend", nargs="+", default=[], metavar="UID",
                          help="with --dicomweb: these SeriesInstanceUIDs (only these, with --study or --query)")
        pacs.add_argument("--store", action="store_true",
                          help="send the DICOM results to the --dicomweb server (STOW-RS); implies --dicom")
    pacs.add_argument("--store-dimse", default=None, metavar="AET@HOST:PORT",
                      help="send the DICOM results by C-STORE to this DICOM node" + ("; implies --dicom" if reading
                                                                                     else ""))
    pacs.add_argument("--credentials", default=None, metavar="FILE",
                      help="file of SEGUNCERTAINTY_DICOMWEB_USER=..., _PASSWORD=... or _TOKEN=... lines")
    pacs.add_argument("--ca-bundle", default=None, metavar="FILE",
                      help="CA certificates (PEM) to verify the server's TLS certificate with (default: the system's)")
    pacs.add_argument("--timeout", type=float, default=30.0, metavar="S",
                      help="seconds to wait for each answer of the server (default: %(default)s)")


def _dicomweb(args):
    """The DICOMweb server ``--dicomweb`` names, with the credentials and CA bundle; UsageError before any
    request on a bad URL, credentials file or timeout."""
    from .io.dicomweb import DicomWeb, read_credentials

    if not args.timeout > 0:
        raise UsageError(f"--timeout must be a positive number of seconds, got {args.timeout}")
    return DicomWeb(args.dicomweb, read_credentials(args.credentials), args.ca_bundle, args.timeout)


def _query(items: list[str]) -> dict[str, str]:
    pairs = [item.partition("=") for item in items]
    if any(not key or not sep or not value for key, sep, value in pairs):
        raise UsageError(f"--query expects KEY=VALUE (a DICOM keyword or tag), got {' '.join(items)!r}")
    return {key: value for key, _, value in pairs}


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
            from .inference.segment import cancel_between_modules, segment_image
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
            with cancel_between_modules(cancel):  # the load's probe passes
                model = load_model(options.model)
            reporter("load", 1.0, f"model {model.description.name} {model.description.version}")
            selected = _select_calibration(options, model.description)
            cancel.check()
            outputs = segment_image(image, model, options, reporter, cancel, scratch)
            cancel.check()
            reporter("write", 0.0, f"writing to {out}")
            settings = options.settings(image.GetMetaData(SERIES_UID_TAG) if path.is_dir() else None)
            if selected is not None:
                from .calibration.store import calibration_record
                from .inference.calibrated import apply_calibration

                note = apply_calibration(outputs, *selected)
                if note:
                    outputs.notes.append(note)
                else:
                    settings["calibration"] = calibration_record(*selected)
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
    from .cohort.pacs import Destination, fetch_series, store_cohort
    from .cohort.run import run_cohort
    from .core.options import SegmentOptions

    if args.store or args.store_dimse:
        args.dicom = True
    options = SegmentOptions.from_args(args).check()
    if bool(args.inputs) == bool(args.dicomweb):
        raise UsageError("cohort: give INPUT paths or --dicomweb URL (not both)")
    if (args.study or args.query or args.series) and not args.dicomweb:
        raise UsageError("--study, --query and --series need --dicomweb URL")
    if args.dicomweb and not (args.study or args.query or args.series):
        raise UsageError("--dicomweb needs --study UID..., --series UID... or --query KEY=VALUE... (what to read)")
    if args.store and not args.dicomweb:
        raise UsageError("--store sends to the --dicomweb server; for another node use --store-dimse AET@HOST:PORT")
    server = _dicomweb(args) if args.dicomweb else None
    query = _query(args.query)
    fetch = (lambda root: fetch_series(server, root, args.study, query, args.series)) if server else None
    destination = Destination(dimse=args.store_dimse) if args.store_dimse else Destination(web=server) \
        if args.store else None
    cancel = _CancelFlag()
    try:
        rows = run_cohort(args.inputs, args.out, options, args.workers, args.executor, args.address,
                          args.progress, cancel, fetch)
        if destination is not None:
            stored, rows = store_cohort(Path(args.out), destination, rows)
            print(f"Stored {plural(stored, 'DICOM object')} on {destination.label}", file=sys.stderr)
    finally:
        cancel.restore()
    failed = [row["case"] for row in rows if row["status"] == "failed"]
    counts = {status: sum(row["status"] == status for row in rows) for status in ("done", "skipped", "failed")}
    stale = sum(row["status"] == "stale" for row in rows)
    print(f"Wrote {Path(args.out) / 'worklist.csv'}: {counts['done']} done, {counts['skipped']} skipped, "
          f"{counts['failed']} failed" + (f", {stale} stale (earlier settings)" if stale else ""), file=sys.stderr)
    if failed:
        shown = ", ".join(failed[:5]) + (f" and {len(failed) - 5} more" if len(failed) > 5 else "")
        print(f"seguncertainty: error: {len(failed)} case(s) failed (errors in worklist.csv): {shown}",
              file=sys.stderr)
        return COHORT_CASES_FAILED
    return 0


def cmd_send(args) -> int:
    from .cohort.pacs import Destination, send_folder

    if bool(args.dicomweb) == bool(args.store_dimse):
        raise UsageError("send: give --dicomweb URL or --store-dimse AET@HOST:PORT (one of them)")
    destination = Destination(web=_dicomweb(args)) if args.dicomweb else Destination(dimse=args.store_dimse)
    stored, cases = send_folder(Path(args.folder), destination)
    print(f"Stored {plural(stored, 'DICOM object')} of {plural(cases, 'run')} on {destination.label}")
    return 0


def _select_calibration(options, description):
    from .cohort.worker import select_for_run

    return select_for_run(options, description)


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
        if "predicted_dice" in scores:
            p = scores["predicted_dice"]
            print(f"  {name}: predicted Dice {p['value']:.3f}, interval [{p['interval'][0]:.3f}, "
                  f"{p['interval'][1]:.3f}] at coverage {p['coverage']:g}"
                  + (f"; {readings['calibration']['reading']}" if "calibration" in readings else ""))
    _print_calibration(outputs.scores)


def _print_calibration(scores: dict) -> None:
    from .calibration.apply import NOT_CALIBRATED

    referral = scores.get("referral")
    if referral is None:
        print(f"  {NOT_CALIBRATED}")
        return
    flagged = ("" if referral["flagged_ml"] is None else
               f": {referral['flagged_ml']:.1f} mL flagged"
               + ("" if referral["flagged_percent_of_segment"] is None
                  else f" ({referral['flagged_percent_of_segment']:.1f} % of the segment)"))
    print(f"  referral: {referral['map']} >= {referral['threshold']} (calibration {scores['calibration']['id']}, "
          f"n = {referral['n_calibration']}, alpha = {referral['alpha']}){flagged}")


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
    add.add_argument("--name", type=_model_name, default=None,
                     help="install under this name (default: the model's own name; an nnU-Net model: "
                          "<dataset>-<configuration>, e.g. Dataset123_Liver-3d_fullres)")
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
        version = f"v{s.version}" if s.version[:1].isdigit() else s.version  # "v1.2", "nnU-Net v2 (...)"
        print(f"{e.name}  {version}  {s.task}  format={e.format}  modality={s.modality}  "
              f"labels={','.join(s.labels.values())}  methods={','.join(s.methods)}  members={s.members}  "
              f"{e.folder}{status}")
        for line in _calibration_lines(e.name):
            print(f"    {line}")
    broken = [e.name for e in entries if e.error]
    if args.verify and broken:
        print(f"seguncertainty: error: {len(broken)} model(s) failed the check: {', '.join(broken)}", file=sys.stderr)
        return ModelError.exit_code
    return 0


def _calibration_lines(model_name: str) -> list[str]:
    """One line per calibration made for ``model_name`` (name match; applying also checks the weights)."""
    from .calibration.store import list_calibrations

    return [f"calibration {doc['id']}: method {doc['method']}, samples "
            f"{doc['samples'] if doc['samples'] is not None else 'default'}, n = {doc['n']}, alpha = {doc['alpha']}, "
            f"{doc['created'][:10]}" for _, doc in list_calibrations() if doc["model"]["name"] == model_name]


# -- seguncertainty calibrate ---------------------------------------------------------------------------
def _add_calibrate_parser(sub) -> None:
    cal = sub.add_parser("calibrate", help="fit a referral threshold with a guarantee and a predicted Dice on "
                                           "labelled cases")
    cal.add_argument("model", help="model name, card path, nnU-Net v2 trained-model folder or MONAI bundle folder")
    cal.add_argument("--images", nargs="+", required=True, metavar="INPUT",
                     help="what cohort accepts: image files, folders (DICOM series included), CSV files")
    cal.add_argument("--labels", required=True,
                     help="folder of reference labelmaps named as the cases' inputs (case_0000.nii.gz pairs with "
                          "case.nii.gz)")
    cal.add_argument("--method", default=DEFAULT_METHOD, choices=METHODS,
                     help="uncertainty method (default: %(default)s)")
    cal.add_argument("--samples", type=int, default=None, help="samples per member (default: the method's)")
    cal.add_argument("--alpha", type=float, default=0.1,
                     help="target expected fraction of missed errors, and 1 - the Dice intervals' coverage "
                          "(default: %(default)s)")
    cal.add_argument("--map", default="entropy", choices=[m for m in MAP_CHOICES if m != "probability"],
                     help="uncertainty map the referral threshold applies to (default: %(default)s)")
    cal.add_argument("--failure-dice", type=float, default=0.8,
                     help="a case fails below this Dice, for the failure AUROC (default: %(default)s)")
    cal.add_argument("--workers", type=int, default=1, help="cases run at the same time (default: %(default)s)")
    cal.add_argument("--executor", default="local", choices=EXECUTORS, help="(default: %(default)s)")
    cal.add_argument("--address", default=None, help="address of a running Ray or Dask cluster to join")
    cal.add_argument("--device", default="auto", choices=DEVICES, help="(default: %(default)s)")
    cal.add_argument("--seed", type=int, default=0, help="random seed of the dropout masks (default: %(default)s)")
    add_backend_options(cal)
    cal.add_argument("--progress", default="bar", choices=("bar", "json", "none"), help="(default: %(default)s)")
    cal.add_argument("--out", default=None,
                     help="report folder; the cases' outputs go to its cases/ sub-folder, resumable "
                          "(default: ./seguncertainty_calibration/<model name>-<method>)")


def cmd_calibrate(args) -> int:
    from .calibration.store import write_calibration
    from .cohort.run import run_cohort
    from .core.options import SegmentOptions
    from .evaluation.calibrate import calibration_document, pair_references, write_report
    from .evaluation.calibration_fit import FEW_CASES, MIN_CASES

    if not 0.0 < args.alpha < 1.0:
        raise UsageError(f"calibrate: --alpha must lie in (0, 1), got {args.alpha}")
    labels = Path(args.labels)
    if not labels.is_dir():
        raise InputImageError(f"--labels {labels} is not a folder" if labels.exists()
                              else f"--labels {labels} not found")
    options = SegmentOptions(model=args.model, method=args.method, samples=args.samples, device=args.device,
                             seed=args.seed, maps=(args.map,), overview=False, calibration="none",
                             backend=args.backend, precision=args.precision).check()
    out = Path(args.out) if args.out else Path("seguncertainty_calibration") / (
        f"{Path(args.model).name}-{args.method}")
    cancel = _CancelFlag()
    try:
        rows = run_cohort(args.images, out / "cases", options, args.workers, args.executor, args.address,
                          args.progress, cancel)
    finally:
        cancel.restore()
    pairs, notes = pair_references(rows, out / "cases", labels)
    failed = [row["case"] for row in rows if row["status"] == "failed"]
    if failed:
        notes.append(f"{len(failed)} case(s) failed (errors in {out / 'cases' / 'worklist.csv'}): "
                     f"{', '.join(failed[:5])}")
    for note in notes:
        logging.warning(note)
    if len(pairs) < MIN_CASES:
        raise UsageError(f"calibrate: needs at least {MIN_CASES} labelled cases, got {len(pairs)}")
    if len(pairs) < FEW_CASES:
        logging.warning(f"only {len(pairs)} labelled cases: the conformal corrections cost 1/(n+1) = "
                        f"{1 / (len(pairs) + 1):.3f} of alpha; {FEW_CASES} or more are advised")
    doc = calibration_document(pairs, args.alpha, args.map, args.failure_dice, args.samples)
    path = write_calibration(doc, doc["model"]["folder"])
    report = write_report(doc, path, out)
    referral = doc["referral"]
    print(f"Wrote calibration {path} (n = {doc['n']}, alpha = {doc['alpha']}, {doc['map']} threshold "
          f"{referral['threshold']}) and {report}")
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
        commands = {"segment": cmd_segment, "cohort": cmd_cohort, "evaluate": cmd_evaluate, "models": cmd_models,
                    "send": cmd_send, "calibrate": cmd_calibrate}
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
    """The process entry (console script and ``python -m``): main(); after ``segment``, and after a cancel of
    any command, the process ends without the interpreter's teardown (about 1 s of freeing torch's and
    MONAI's state) once its outputs are published (or its staging removed) and stdout and stderr flushed.
    Other commands exit normally (Ray and Dask clean up at exit)."""
    argv = sys.argv[1:]
    segment = argv[:1] == ["segment"]
    code = main(argv, process_entry=True)
    if segment or code == CancelledError.exit_code:
        logging.shutdown()
        sys.stdout.flush()
        sys.stderr.flush()
        os._exit(code)
    sys.exit(code)


if __name__ == "__main__":
    run()
