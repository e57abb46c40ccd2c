"""One cohort case, run in a worker process: ``process_case(item) -> result``.

The item (a plain dict, pickled to the worker): ``case`` (id), ``path`` (file or DICOM folder, absolute),
``input`` (as the user gave it), ``series`` (SeriesInstanceUID or None), ``files`` (a DICOM case's files),
``out`` (the case folder, absolute), ``options`` (:class:`SegmentOptions` as a dict), ``threads`` (torch
threads for this worker, or None).

The case folder is written as ``segment`` writes it (io.outputs: same files, same manifest, atomic), its
manifest's settings also holding ``input_sha256``, ``input_resolved`` (the absolute path read) and the
requested ``samples``, ``overview`` and ``save_samples``: a case whose folder already records the same
:func:`resume_key` is skipped.

The result: ``case``, ``status`` ("done", "skipped", "failed" or "cancelled"), ``seconds``, ``error``
(one line, "" unless failed), ``method``, ``model`` (the model's name once loaded, else the name of the
reference given), ``n_samples`` (drawn; the requested count or None before a run), and for a finished case
``scores`` (scores.json's ``classes``) and ``score_reference`` (the usual ranges the readings use: the
calibration's when one was applied, else the model card's, or None).
Every error is caught and recorded.
"""

from __future__ import annotations

import json
import multiprocessing
import signal
import threading
import time
from collections.abc import Callable
from dataclasses import replace
from pathlib import Path

from ..core.files import series_sha256, sha256_file
from ..core.manifest import ManifestError, model_record, read_manifest, written_files
from ..core.options import SegmentOptions

_models: dict[tuple[str, str], object] = {}  # (model ref, device) -> loaded model: one load per worker process
_cancelled: Callable[[], bool] | None = None  # set by run.py when the cases run in its own process


def set_cancel(flag: Callable[[], bool] | None) -> None:
    """Let cases run in this process poll ``flag`` (the cohort's cancel flag)."""
    global _cancelled
    _cancelled = flag


def release_models() -> None:
    """Forget the loaded models (after a cohort run in the caller's own process)."""
    _models.clear()


def input_sha256(path: str, files: tuple[str, ...] | list[str] = ()) -> str:
    """sha256 of an image file, or of a DICOM series (core.files.series_sha256, the digest the Slicer
    worklist checks). A .nhdr / .mhd header with a detached data file: the header only."""
    return series_sha256(path, files) if files else sha256_file(path)

def resume_key(manifest: dict) -> dict:
    """What must match for a case folder to be reused: the input's sha256, the model (name, version,
    every weight file's sha256), the method and every setting that changes what is written (the device
    and the torch thread count do not)."""
    settings = manifest.get("settings", {})
    model = manifest.get("model", {})
    return {"input_sha256": settings.get("input_sha256"), "model": model.get("name"), "version": model.get("version"),
            "weights": [m.get("sha256") for m in model.get("members", [])], "method": manifest.get("method"),
            **{k: settings.get(k) for k in ("samples", "seed", "overlap", "max_batch", "format", "maps", "map_dtype",
                                             "overview", "save_samples", "dicom_series", "dicom", "calibration")}}


def _load(options: SegmentOptions):
    from ..models.loader import load_model

    key = (options.model, options.device)
    if key not in _models:
        _models[key] = load_model(options.model)
    return _models[key]


def _earlier_run(folder: Path, wanted: dict) -> dict | None:
    """scores.json of the earlier run in ``folder`` if it is complete and matches ``wanted``, else None."""
    try:
        manifest = read_manifest(folder, kinds=False)
        files = written_files(manifest)
        if files is None or resume_key(manifest) != wanted or not all((folder / f).exists() for f in files):
            return None
        return json.loads((folder / "scores.json").read_text(encoding="utf-8"))
    except (ManifestError, OSError, ValueError, AttributeError):
        return None


def _case_settings(item: dict, options: SegmentOptions, digest: str) -> dict:
    """The manifest's ``settings`` of a cohort case: segment's, plus what resuming compares."""
    return {**options.settings(item["series"]), "input_sha256": digest, "input_resolved": item["path"],
            "samples": options.samples, "overview": options.overview, "save_samples": options.save_samples}


def select_for_run(options: SegmentOptions, description) -> tuple[dict, Path] | None:
    """The calibration (document, file) a run of ``description`` with ``options`` applies, or None."""
    from ..calibration.store import select_calibration

    weights = [m["sha256"] for m in model_record(description)["members"]]
    return select_calibration(options.calibration, weights, options.method, options.samples)


def with_temperature(options: SegmentOptions, selected: tuple[dict, Path] | None) -> SegmentOptions:
    """``options`` with the selected calibration's temperature (t = 1 without one, or from a version-1 file)."""
    from ..calibration.store import calibration_temperature

    return replace(options, temperature=1.0 if selected is None else calibration_temperature(selected[0]))


def _segment(item: dict, options: SegmentOptions, model, settings: dict, cancelled, selected=None) -> dict:
    from ..inference.calibrated import apply_calibration
    from ..inference.segment import segment_image
    from ..io.dicom import series_slice_files
    from ..io.images import read_image
    from ..results.run_folder import check_dicom_input, output_folder, write_outputs

    if options.dicom:
        check_dicom_input(item["path"], item["series"])
    with output_folder(item["out"]) as folder, folder.scratch() as scratch:
        image = read_image(item["path"], item["series"])
        outputs = segment_image(image, model, options, None, cancelled, scratch)
        if selected is not None:
            note = apply_calibration(outputs, *selected)
            if note:
                outputs.notes.append(note)
                settings.pop("calibration", None)
        sources = series_slice_files(Path(item["path"]), item["series"]) if options.dicom else None
        write_outputs(outputs, folder, model.description, item["input"], options, settings, cancelled, sources)
    return outputs.scores


def _run(item: dict, cancelled, result: dict) -> tuple[str, dict, dict | None]:
    maps = item["options"]["maps"]
    options = SegmentOptions(**{**item["options"], "maps": None if maps is None else tuple(maps)})
    if item.get("threads"):
        import torch

        torch.set_num_threads(item["threads"])
    settings = _case_settings(item, options, input_sha256(item["path"], item.get("files", ())))
    model = _load(options)
    description = model.description
    selected = select_for_run(options, description)
    options = with_temperature(options, selected)
    if selected is not None:
        from ..calibration.store import calibration_record

        settings["calibration"] = calibration_record(*selected)
    result["model"] = description.name
    wanted = resume_key({"settings": settings, "model": model_record(description), "method": options.method})
    reference = description.info.get("score_reference")
    earlier = _earlier_run(Path(item["out"]), wanted)
    if earlier is not None:
        return "skipped", earlier, reference
    return "done", _segment(item, options, model, settings, cancelled, selected), reference


def process_case(item: dict) -> dict:
    """Segment one case into its folder (or skip it when its outputs are current); never raises."""
    from ..core.errors import CancelledError, SegUncertaintyError
    from ..inference.scores import reference_applies

    if multiprocessing.parent_process() is not None and threading.current_thread() is threading.main_thread():
        signal.signal(signal.SIGINT, signal.SIG_IGN)  # a local worker process: Ctrl-C is the cohort's to handle
    start = time.monotonic()
    result = {"case": item["case"], "status": "failed", "error": "", "scores": None, "score_reference": None,
              "method": item["options"]["method"], "model": Path(item["options"]["model"]).name,
              "n_samples": item["options"]["samples"]}
    try:
        status, scores, reference = _run(item, _cancelled, result)
        if scores.get("usual_ranges", {}).get("from") == "calibration":  # the calibration's replace the card's
            reference = scores["usual_ranges"]
        applies = reference_applies(reference, scores.get("method"), scores.get("n_samples"))
        result.update(status=status, scores=scores.get("classes", {}), score_reference=reference if applies else None,
                      n_samples=scores.get("n_samples", result["n_samples"]))
    except CancelledError:
        result["status"] = "cancelled"
    except SegUncertaintyError as exc:
        result["error"] = str(exc)
    except MemoryError:
        result["error"] = "out of memory"
    except Exception as exc:  # a bug or an unforeseen input: recorded, the cohort goes on
        result["error"] = f"unexpected {type(exc).__name__}: {exc}"
    result["error"] = " ".join(result["error"].split())
    result["seconds"] = round(time.monotonic() - start, 3)
    return result
