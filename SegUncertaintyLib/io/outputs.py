"""Write a run's outputs and the manifest that names every file and its meaning.

All files are written into a staging folder and moved into place at the end, the manifest last: a
folder with ``manifest.json`` holds a complete run, and a failed run leaves nothing half-written.
"""

from __future__ import annotations

import platform
from pathlib import Path

import numpy as np

from .. import __version__
from ..inference.pipeline import MAP_MEANINGS, SegmentationOutputs, samples_on_input_grid
from ..models.card import ModelCard
from .images import check_writable_dir, publish, staging_dir, write_image, write_json
from .overview import save_overview

MANIFEST = "manifest.json"
FORMATS = ("nrrd", "nii.gz")


def write_outputs(outputs: SegmentationOutputs, out_dir: str | Path, card: ModelCard, input_name: str,
                  settings: dict, fmt: str = "nrrd", overview: bool = True, samples: bool = False) -> Path:
    """Write images, scores.json, overview.png and manifest.json into ``out_dir``; return the manifest.

    ``samples``: also write each class's per-sample segmentations on the input grid, bit-packed
    (``samples_<label>.npz``: ``bits`` (ceil(T/8), z, y, x) uint8, bit t % 8 of byte t // 8 is sample t).
    """
    if fmt not in FORMATS:
        raise ValueError(f"format must be one of {FORMATS}")
    out_dir = check_writable_dir(out_dir)
    entries: list[dict] = []
    with staging_dir(out_dir) as stage:
        def add_image(image, name: str, kind: str, meaning: str, **extra) -> None:
            filename = f"{name}.{fmt}"
            write_image(image, stage / filename)
            entries.append({"file": filename, "kind": kind, "meaning": meaning, **extra})

        add_image(outputs.segmentation, "segmentation", "labelmap",
                  "Segmentation: argmax of the mean probability", labels={str(k): v for k, v in card.labels.items()},
                  terminology=card.info.get("terminology", {}))
        for name, image in outputs.probabilities.items():
            add_image(image, f"probability_{name}", "probability",
                      f"Mean probability of '{name}' over samples, 0-1", label=name)
        for name, image in outputs.maps.items():
            add_image(image, name, "uncertainty", MAP_MEANINGS[name], map=name)
        if samples and outputs.model_grid_sample_bits is not None:
            for k, name in enumerate(n for v, n in sorted(card.labels.items()) if v != 0):
                bits = samples_on_input_grid(outputs.model_grid_sample_bits[k], outputs.n_samples,
                                             outputs.model_grid_image, outputs.segmentation)
                np.savez_compressed(stage / f"samples_{name}.npz", bits=bits, n_samples=outputs.n_samples)
                entries.append({"file": f"samples_{name}.npz", "kind": "samples", "label": name,
                                "meaning": f"Per-sample segmentations of '{name}' on the input grid, bit-packed: "
                                           "bits[t // 8] >> (t % 8) & 1 is sample t"})
        write_json(outputs.scores, stage / "scores.json")
        entries.append({"file": "scores.json", "kind": "scores",
                        "meaning": "Subject-level scores per class, with definitions and directions"})
        if overview:
            title = f"{Path(input_name).name} — {card.name} — {outputs.method}"
            save_overview(outputs, stage / "overview.png", title=title)
            entries.append({"file": "overview.png", "kind": "figure",
                            "meaning": "Mid-slices: image with segmentation contour and uncertainty maps"})
        manifest = {
            "format_version": 1,
            "tool": f"seguncertainty {__version__}",
            "python": platform.python_version(),
            "input": input_name,
            "model": {"name": card.name, "version": card.version, "folder": str(card.folder),
                      "members": [{"file": m.path.name, "sha256": m.sha256} for m in card.members]},
            "method": outputs.method,
            "n_samples": outputs.n_samples,
            "device": outputs.device,
            "settings": settings,
            "labels": {str(k): v for k, v in card.labels.items()},
            "notes": outputs.notes,
            "outputs": entries,
        }
        write_json(manifest, stage / MANIFEST)
        publish(stage, out_dir, [e["file"] for e in entries] + [MANIFEST])
    return out_dir / MANIFEST
