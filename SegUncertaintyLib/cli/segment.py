"""``seguncertainty segment``: one volume -> a run folder of segmentation, maps, scores and manifest."""

from __future__ import annotations

import contextlib
import hashlib
import logging
import os
import sys
from pathlib import Path

from ..core.errors import InputImageError, UsageError
from .common import CancelFlag, add_segment_options, plural

# Packages MONAI imports whenever they are installed (its package __init__ loads every submodule) that a card
# model's run never uses: pytorch-ignite (dev-only here; 0.7 s, it pulls in torch.distributed) and scikit-image.
# Whole-volume formats may need them (nnU-Net resamples with scikit-image), so only card runs leave them out.


UNUSED_BY_CARD_RUNS = ("ignite", "skimage")


SAMPLE_DIR = Path(__file__).parents[1] / "sample"


SAMPLE_IMAGE = SAMPLE_DIR / "colin27_t1_2mm.nii.gz"


def add_parser(sub) -> None:
    seg = sub.add_parser("segment", help="segment one volume with uncertainty maps and scores")
    seg.add_argument("input", nargs="?", help="image file (NIfTI, NRRD, MHA) or DICOM folder")
    seg.add_argument("--sample", action="store_true", help="run on the bundled sample T1 volume")
    seg.add_argument("--series", default=None, metavar="UID",
                     help="SeriesInstanceUID to read from a DICOM folder holding several series")
    seg.add_argument("--out", default=None,
                     help="output folder (default: ./seguncertainty_out/<input name>-<hash of its path>)")
    add_segment_options(seg)


def _input_name(path: Path) -> str:
    from ..io.images import image_suffix

    suffix = image_suffix(path)
    return path.name[: -len(suffix)] if suffix and path.name.lower().endswith(suffix) else path.name


def default_out(path: Path) -> Path:
    """``seguncertainty_out/<name>-<hash of the absolute input path>``: same input, same folder; two
    inputs with one file name in different folders, different folders."""
    digest = hashlib.sha256(os.fsencode(os.path.abspath(path))).hexdigest()[:8]
    return Path("seguncertainty_out") / f"{_input_name(path)}-{digest}"


def check_segment_options(args):
    """The checked SegmentOptions of ``segment``; UsageError (exit 2) before anything is read."""
    from ..core.options import SegmentOptions

    if args.sample == bool(args.input):
        raise UsageError("segment: give an INPUT image or --sample (not both)")
    return SegmentOptions.from_args(args).check()


def check_before_loading(options, path: Path):
    """What can be refused in a fraction of a second, before torch is imported or weights are loaded: a
    missing input (exit 3) and a sample count a card model cannot run (exit 2, or 4 for an ensemble of one).
    Returns the model's card (None: a whole-volume format)."""
    from ..models.catalog import check_card_plan

    if not path.exists():
        raise InputImageError(f"Input image not found: {path}")
    return check_card_plan(options.model, options.method, options.samples)


def command(args) -> int:
    from ..io.publish import output_folder

    options = check_segment_options(args)
    path = SAMPLE_IMAGE if args.sample else Path(args.input)
    card = check_before_loading(options, path)
    if card is not None and args.process_entry:
        leave_out_unused_imports()
    if options.dicom:
        from ..results.run_folder import check_dicom_input

        check_dicom_input(path, None)
    out = Path(args.out) if args.out else default_out(path)
    cancel = CancelFlag()
    reporter = None
    try:
        # lock, leftovers of killed runs, refusal: before the heavy imports; large intermediate data and the
        # output volumes of whole-volume models wait in the scratch folder beside the output. The overview's
        # process imports matplotlib beside this one's imports (a library caller draws in its own process).
        with output_folder(out) as folder, folder.scratch() as scratch, _overview_drawer(options, args) as draw:
            from ..core.progress import ProgressReporter
            from ..inference.segment import cancel_between_modules, segment_image
            from ..inference.sliding_window import pick_device
            from ..io.dicom import SERIES_UID_TAG, series_slice_files
            from ..io.images import read_image
            from ..models.loader import load_model
            from ..results.run_folder import write_outputs

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
            options = _with_temperature(options, selected)  # the calibration's t divides every pass's logits
            cancel.check()
            outputs = segment_image(image, model, options, reporter, cancel, scratch)
            cancel.check()
            reporter("write", 0.0, f"writing to {out}")
            settings = options.settings(image.GetMetaData(SERIES_UID_TAG) if path.is_dir() else None)
            if selected is not None:
                from ..calibration.store import calibration_record
                from ..inference.calibrated import apply_calibration

                note = apply_calibration(outputs, *selected)
                if note:
                    outputs.notes.append(note)
                else:
                    settings["calibration"] = calibration_record(*selected)
            sources = series_slice_files(path, args.series) if options.dicom else None
            manifest = write_outputs(outputs, folder, model.description, str(path), options, settings, cancel,
                                     sources, draw)
            reporter("write", 1.0, "done")
    finally:
        if reporter is not None:
            reporter.close()
        cancel.restore()
    for note in outputs.notes:
        logging.warning(note)
    _print_summary(outputs, manifest)
    return 0


def _overview_drawer(options, args):
    """The overview's own process when this process runs only this command and draws an overview; else a
    context giving None (write_outputs then draws here)."""
    if options.overview and args.process_entry:
        from ..results.overview_process import OverviewProcess

        return OverviewProcess()
    return contextlib.nullcontext()


def _choose_threads() -> None:
    """torch's CPU threads from the cores free now (inference.budget.free_cores), unless OMP_NUM_THREADS or
    MKL_NUM_THREADS says how many (a cohort's workers, or the user)."""
    if not (os.environ.get("OMP_NUM_THREADS") or os.environ.get("MKL_NUM_THREADS")):
        import torch

        from ..inference.budget import free_cores

        torch.set_num_threads(free_cores())


def _select_calibration(options, description):
    from ..cohort.worker import select_for_run

    return select_for_run(options, description)


def _with_temperature(options, selected):
    from ..cohort.worker import with_temperature

    return with_temperature(options, selected)


def _print_summary(outputs, manifest: Path) -> None:
    """The run's result on stdout: the folder, then per class its volume, scores and their readings."""
    from ..inference.scores import NO_RANGE, NO_SEGMENTATION, REVIEW, SUBJECT_SCORES

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
            whose = ("the calibration cases'" if outputs.scores.get("usual_ranges", {}).get("from") == "calibration"
                     else "the model's")
            print(f"  {name}: " + (f"review recommended, outside {whose} usual range: {', '.join(review)}"
                                   if review else f"all scores within {whose} usual range"))
        if "predicted_dice" in scores:
            p = scores["predicted_dice"]
            print(f"  {name}: predicted Dice {p['value']:.3f}, interval [{p['interval'][0]:.3f}, "
                  f"{p['interval'][1]:.3f}] at coverage {p['coverage']:g}"
                  + (f"; {readings['calibration']['reading']}" if "calibration" in readings else ""))
    _print_calibration(outputs.scores)


def _print_calibration(scores: dict) -> None:
    from ..calibration.apply import NOT_CALIBRATED

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


def leave_out_unused_imports() -> None:
    """Make :data:`UNUSED_BY_CARD_RUNS` unimportable in this process (before MONAI is imported), so MONAI's
    optional imports skip them. Only for the process entry: it would also hide them from later callers."""
    for name in UNUSED_BY_CARD_RUNS:
        sys.modules.setdefault(name, None)  # None: "import name" raises ImportError
