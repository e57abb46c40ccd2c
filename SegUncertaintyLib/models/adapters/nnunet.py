"""nnU-Net v2 trained-model folders, run with nnunetv2's own code (``pip install 'seguncertainty[nnunet]'``).

A folder ``Trainer__Plans__configuration`` holds dataset.json, plans.json and fold_N/checkpoint_final.pth
(checkpoint_best.pth where final is absent). Every fold is an ensemble member. Each pass (one fold, one
mirroring) is nnU-Net's own output for that fold: its preprocessing (transpose, crop to non-zero, the
plans' normalization, resampling), its sliding window (its tile steps, Gaussian sigma 1/8, logits summed
in float16), logits resampled back with its own function, then softmax; background probability 1 outside
the non-zero crop. The resampling back runs one class at a time and the softmax, uncropping and
transpose a few planes at a time, handed to the accumulator as slabs (``pass_slabs``): per voxel the same
numbers as nnU-Net's whole-volume export, without its C x V float64 and float32 copies. Like nnU-Net,
the image's direction matrix is ignored: voxel axes as stored.
"""

from __future__ import annotations

import contextlib
import importlib
import inspect
import io
import math
import pkgutil
import re
import uuid
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import SimpleITK as sitk
import torch

from ...core import spill
from ...core.errors import ModelError
from ...core.files import read_json_object, sha256_file
from ...core.methods import SampleSpec, check_capable, parse_method, plan_samples
from ...core.spill import InMemoryArray, RawArray, SlabWriter, spill_if_large
from ..card import Member
from ..description import ModelDescription
from ..dropout import count_active_dropout, set_dropout
from ..registry import NNUNET, ModelSummary, nnunet_model_folder
from .base import WholeVolumeModel

CHECKPOINT_NAMES = ("checkpoint_final.pth", "checkpoint_best.pth")
SLAB_VOXELS = 1 << 19  # voxels per slab of a pass handed to the accumulator (2 planes of 512 x 512)
SCORE_REFERENCE = "score_reference.json"
INSTALL_HINT = "nnU-Net v2 models need the optional dependency: pip install 'seguncertainty[nnunet]'"
ENSEMBLE_NOTE = ("nnU-Net itself averages the logits of its folds (and mirrorings) before one softmax; here "
                 "each fold and mirroring is one sample and the probabilities are the mean of their softmax "
                 "outputs, so that their disagreement gives the uncertainty.")


def _nnunet():
    """Import the nnunetv2 pieces used here, or ModelError with the install hint."""
    try:
        from nnunetv2.inference import predict_from_raw_data
        from nnunetv2.utilities import label_handling, plans_handling  # noqa: F401
    except ImportError as exc:
        raise ModelError(f"{INSTALL_HINT} ({exc})") from exc
    return predict_from_raw_data


def find_folds(folder: Path) -> list[tuple[str, Path]]:
    """(fold name, checkpoint) for every fold_N folder (fold_all only when there is no numbered fold).

    A fold folder without checkpoint_final.pth or checkpoint_best.pth is an error, not silently skipped.
    """
    numbered = sorted((p for p in folder.glob("fold_*") if p.is_dir() and re.fullmatch(r"fold_\d+", p.name)),
                      key=lambda p: int(p.name[5:]))
    folds = numbered or [p for p in [folder / "fold_all"] if p.is_dir()]
    if not folds:
        raise ModelError(f"nnU-Net model {folder}: no fold_N folder")
    found = []
    for fold in folds:
        checkpoint = next((fold / n for n in CHECKPOINT_NAMES if (fold / n).is_file()), None)
        if checkpoint is None:
            raise ModelError(f"nnU-Net model {folder.name}: {fold.name} has no checkpoint_final.pth "
                             "nor checkpoint_best.pth (incomplete training or copy)")
        found.append((fold.name, checkpoint))
    return found


def _numpy_scalar_types() -> list:
    """Exactly the numpy types a pickled numpy scalar needs (nnU-Net logs its metrics as numpy scalars)."""
    core = getattr(np, "_core", None) or np.core
    dtypes = [type(np.dtype(t)) for t in (np.float16, np.float32, np.float64, np.int32, np.int64, np.bool_)]
    return [core.multiarray.scalar, np.dtype, *dtypes]


def load_checkpoint(path: Path) -> dict:
    """torch.load with weights_only=True, allowing numpy scalars only; ModelError otherwise."""
    try:
        with torch.serialization.safe_globals(_numpy_scalar_types()):
            checkpoint = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as exc:  # unpickling raises many types; the first line names the problem
        raise ModelError(f"nnU-Net checkpoint {path.parent.name}/{path.name} cannot be loaded safely: "
                         f"{str(exc).strip().splitlines()[0]}") from exc
    if not isinstance(checkpoint, dict) or "network_weights" not in checkpoint:
        raise ModelError(f"nnU-Net checkpoint {path.parent.name}/{path.name} has no 'network_weights'")
    return checkpoint


def default_name(dataset: str, configuration: str, trainer: str, plans: str) -> str:
    """A model's name after its dataset: ``<dataset>-<configuration>`` (``Dataset123_Liver-3d_fullres``), then
    ``-<trainer>`` and ``-<plans>`` where they are not nnU-Net's defaults (nnUNetTrainer, nnUNetPlans), so
    two trained models of one dataset differ; characters outside letters, digits, '.', '_', '-' become '_'."""
    parts = [dataset, configuration, *(v for v, usual in ((trainer, "nnUNetTrainer"), (plans, "nnUNetPlans"))
                                       if v != usual)]
    return re.sub(r"[^A-Za-z0-9._-]", "_", "-".join(parts))


def find_trainer_class(name: str):
    """nnunetv2's trainer class ``name``, or None. Like nnunetv2's own lookup, but modules that fail to
    import (e.g. trainers needing timm/torchvision, whose pip wheels may not load with a CPU torch) are
    skipped instead of aborting the search."""
    import nnunetv2.training.nnUNetTrainer as package
    from nnunetv2.training.nnUNetTrainer import nnUNetTrainer as base_module

    if hasattr(base_module, name):
        return getattr(base_module, name)
    for info in pkgutil.walk_packages(package.__path__, package.__name__ + ".", onerror=lambda _: None):
        try:
            module = importlib.import_module(info.name)
        except Exception:  # noqa: BLE001 - any import failure only means: not this module
            continue
        cls = getattr(module, name, None)
        if isinstance(cls, type):
            return cls
    return None


def _normalization_exists(scheme: str) -> bool:
    import nnunetv2
    from nnunetv2.utilities.find_class_by_name import recursive_find_python_class

    folder = str(Path(nnunetv2.__path__[0]) / "preprocessing" / "normalization")
    return recursive_find_python_class(folder, scheme, "nnunetv2.preprocessing.normalization") is not None


class NnUNetModel(WholeVolumeModel):
    """An nnU-Net v2 trained-model folder: folds as members, nnunetv2's code for every pass."""

    format = NNUNET

    def __init__(self, folder: Path, name: str | None = None):
        """``name``: what the model is called (the name it is installed under); None: ``default_name``."""
        predict_module = _nnunet()
        from nnunetv2.utilities.label_handling.label_handling import determine_num_input_channels
        from nnunetv2.utilities.plans_handling.plans_handler import PlansManager

        self.folder = Path(folder)
        self.notes: list[str] = []
        self.dataset_json = read_json_object(self.folder / "dataset.json", "nnU-Net file", ModelError)
        plans = read_json_object(self.folder / "plans.json", "nnU-Net file", ModelError)
        self.folds = find_folds(self.folder)
        checkpoints = [load_checkpoint(path) for _, path in self.folds]
        first = checkpoints[0]
        self.trainer_name = str(first.get("trainer_name", "nnUNetTrainer"))
        configuration = (first.get("init_args") or {}).get("configuration") or self.folder.name.split("__")[-1]
        for (fold, _), ckpt in zip(self.folds, checkpoints, strict=True):
            other = (ckpt.get("init_args") or {}).get("configuration", configuration)
            if other != configuration:
                raise ModelError(f"nnU-Net model {self.folder.name}: {fold} was trained for configuration "
                                 f"'{other}', fold 0 for '{configuration}'")
        self.mirror_axes = first.get("inference_allowed_mirroring_axes")

        try:
            self.plans_manager = PlansManager(plans)
            if configuration not in plans.get("configurations", {}):
                raise ModelError(f"nnU-Net model {self.folder.name}: plans.json has no configuration "
                                 f"'{configuration}' (the checkpoints' configuration)")
            self.configuration_manager = self.plans_manager.get_configuration(configuration)
            self.label_manager = self.plans_manager.get_label_manager(self.dataset_json)
            n_inputs = determine_num_input_channels(self.plans_manager, self.configuration_manager,
                                                    self.dataset_json)
        except ModelError:
            raise
        except Exception as exc:  # nnunetv2 raises KeyError/AssertionError/... on malformed plans
            raise ModelError(f"nnU-Net model {self.folder.name}: plans.json or dataset.json is not valid for "
                             f"nnunetv2 ({type(exc).__name__}: {exc})") from exc
        self.name = name or default_name(str(self.plans_manager.dataset_name), configuration, self.trainer_name,
                                         str(self.plans_manager.plans_name))
        self._check_supported(n_inputs)
        self.network = self._build_network(n_inputs)
        self.weights = []
        for (fold, _), ckpt in zip(self.folds, checkpoints, strict=True):
            try:
                self.network.load_state_dict(ckpt["network_weights"])
            except RuntimeError as exc:
                raise ModelError(f"nnU-Net model {self.folder.name}: {fold}'s checkpoint does not match the "
                                 f"network that plans.json describes ({str(exc).splitlines()[0]})") from exc
            self.weights.append(ckpt["network_weights"])
        self.n_dropout = count_active_dropout(self.network)
        self._predict_module = predict_module
        self.description = self._describe()

    def _check_supported(self, n_inputs: int) -> None:
        name = self.folder.name
        if self.label_manager.has_regions:
            raise ModelError(f"nnU-Net model {name} is region-based (sigmoid outputs, regions_class_order): "
                             "SegUncertainty's maps assume softmax classes; not supported")
        if self.configuration_manager.previous_stage_name is not None:
            raise ModelError(f"nnU-Net model {name} is a cascade stage (needs the output of "
                             f"'{self.configuration_manager.previous_stage_name}'): not supported; use that "
                             "stage's own folder or the 3d_fullres one")
        if n_inputs != 1:
            channels = ", ".join(map(str, self.dataset_json.get("channel_names", {}).values()))
            raise ModelError(f"nnU-Net model {name} needs {n_inputs} input channels ({channels}); "
                             "SegUncertainty segments one image (one channel)")
        for scheme in self.configuration_manager.normalization_schemes:
            if not _normalization_exists(scheme):
                raise ModelError(f"nnU-Net model {name}: unknown normalization scheme '{scheme}' in plans.json "
                                 "(not one of nnunetv2's)")

    def _build_network(self, n_inputs: int) -> torch.nn.Module:
        """The network as nnU-Net's predictor builds it: the trainer's build_network_architecture."""
        from nnunetv2.training.nnUNetTrainer.nnUNetTrainer import nnUNetTrainer

        trainer = find_trainer_class(self.trainer_name)
        if trainer is None:
            trainer = nnUNetTrainer
            self.notes.append(f"Trainer {self.trainer_name} is not part of nnunetv2: network built from "
                              "plans.json as nnUNetTrainer does.")
        n_out = self.label_manager.num_segmentation_heads
        cm = self.configuration_manager
        try:
            if "plans_manager" in inspect.signature(trainer.build_network_architecture).parameters:
                network = trainer.build_network_architecture(self.plans_manager, cm, n_inputs, n_out,
                                                             enable_deep_supervision=False)
            else:
                network = trainer.build_network_architecture(
                    cm.network_arch_class_name, cm.network_arch_init_kwargs,
                    cm.network_arch_init_kwargs_req_import, n_inputs, n_out, enable_deep_supervision=False)
        except Exception as exc:  # unknown class names, bad kwargs
            raise ModelError(f"nnU-Net model {self.folder.name}: cannot build the network from plans.json "
                             f"({type(exc).__name__}: {str(exc).splitlines()[0] if str(exc) else ''})") from exc
        return network.eval()

    def _describe(self) -> ModelDescription:
        """The folder's description; ``info`` also holds the configuration's spacing_mm and patch_size (x, y, z)."""
        labels = {int(v): str(k) for k, v in self.dataset_json["labels"].items() if k != "ignore"}
        if sorted(labels) != list(range(self.label_manager.num_segmentation_heads)):
            raise ModelError(f"nnU-Net model {self.folder.name}: dataset.json labels {sorted(labels)} are not "
                             f"0..{self.label_manager.num_segmentation_heads - 1}")
        cm = self.configuration_manager
        backward = self.plans_manager.transpose_backward
        spacing = [cm.spacing[i] for i in backward] if len(cm.spacing) == 3 else [0.0, *cm.spacing]
        patch = [cm.patch_size[i] for i in backward] if len(cm.patch_size) == 3 else [1, *cm.patch_size]
        methods = ["softmax"] + (["ensemble"] if len(self.folds) > 1 else []) + (
            ["tta"] if self.mirror_axes is not None else []) + (["mc_dropout"] if self.n_dropout else [])
        channels = list(self.dataset_json.get("channel_names", self.dataset_json.get("modality", {})).values())
        return ModelDescription(
            name=self.name, version=f"nnU-Net v2 ({self.trainer_name})",
            task=str(self.plans_manager.dataset_name), modality=", ".join(map(str, channels)), labels=labels,
            methods=tuple(methods), format=NNUNET, folder=self.folder,
            members=tuple(Member(path, sha256_file(path)) for _, path in self.folds),
            info={"format": NNUNET, "folds": [f for f, _ in self.folds], "trainer": self.trainer_name,
                  "network_class_name": cm.network_arch_class_name,
                  "normalization_schemes": list(cm.normalization_schemes),
                  "spacing_mm": tuple(float(s) for s in reversed(spacing)),
                  "patch_size": tuple(int(p) for p in reversed(patch)),
                  "inference_allowed_mirroring_axes": None if self.mirror_axes is None else list(self.mirror_axes),
                  **self._score_reference()},
        )

    def _score_reference(self) -> dict:
        """Optional usual score ranges for readings: ``score_reference.json`` beside plans.json, in a model
        card's ``score_reference`` format ({"source": ..., "classes": {name: {score: {"review_above": x}}}})."""
        path = self.folder / SCORE_REFERENCE
        if not path.is_file():
            return {}
        reference = read_json_object(path, "nnU-Net file", ModelError)
        if not isinstance(reference.get("classes"), dict):
            raise ModelError(f"nnU-Net model {self.folder.name}: {SCORE_REFERENCE} needs a 'classes' object")
        return {"score_reference": reference}

    # --- the adapter contract -------------------------------------------------------------------------

    def plan(self, method: str, samples: int | None) -> list[SampleSpec]:
        """nnU-Net's own refusals (one fold, no dropout, no mirroring), then the library's plan: folds are the
        members and the checkpoint's mirroring axes the declared flips."""
        reasons = {
            "ensemble": f"has one fold ({self.folds[0][0]}): no ensemble",
            "mc_dropout": "has no dropout layer with p > 0 (plans.json dropout_op): MC dropout is impossible; "
                          "use ensemble or tta",
            "tta": "was trained without mirroring (its checkpoint's inference_allowed_mirroring_axes is None, "
                   "e.g. a NoMirroring trainer): test-time flips would be out of distribution; use ensemble"}
        m = check_capable(method, f"nnU-Net model {self.folder.name}", members=len(self.folds),
                          flips=self.mirror_axes is not None, dropout=bool(self.n_dropout), reasons=reasons)
        return plan_samples(m, len(self.folds), samples, self.mirror_axes or ())

    def method_notes(self, method: str) -> list[str]:
        notes = list(self.notes)
        m = parse_method(method)
        if m.ensemble or m.tta:
            notes.append(ENSEMBLE_NOTE)
        return notes

    def describe(self, spec: SampleSpec) -> str:
        text = self.folds[spec.member][0]
        return text + (f", mirrored over axes {spec.flip}" if spec.flip else "")

    def prepare(self, image: sitk.Image, device: torch.device, scratch: Path | None = None) -> _Prepared:
        """nnU-Net's preprocessing of the image's voxel array (z, y, x), as its SimpleITK reader gives it.
        A large preprocessed input waits in ``scratch`` while it is not needed (between sliding windows)."""
        data = sitk.GetArrayFromImage(image).astype(np.float32, copy=False)[None]  # one copy: nnU-Net changes it
        properties = {"spacing": list(image.GetSpacing())[::-1]}
        preprocessor = self.configuration_manager.preprocessor_class(verbose=False)
        data, _, properties = preprocessor.run_case_npy(data, None, properties, self.plans_manager,
                                                        self.configuration_manager, self.dataset_json)
        self.network.to(device)
        predictor = _one_pass_predictor(self._predict_module.nnUNetPredictor, device)
        predictor.manual_initialization(self.network, self.plans_manager, self.configuration_manager, None,
                                        self.dataset_json, self.trainer_name, None)
        predictor.loaded_member = None
        return _Prepared(predictor, spill_if_large(data, scratch, "nnunet-input"), properties,
                         tuple(reversed(image.GetSize())), scratch)

    def run_pass(self, prepared, spec: SampleSpec) -> np.ndarray:
        """The pass as one (C, z, y, x) array, assembled from ``pass_slabs``."""
        shape = prepared.shape
        out = np.empty((self.label_manager.num_segmentation_heads, *shape), dtype=np.float32)
        for region, p in self.pass_slabs(prepared, spec):
            out[(slice(None), *region)] = p.numpy()
        return out

    def pass_slabs(self, prepared, spec: SampleSpec):
        """nnU-Net's own pass, handed over in slabs: its sliding-window logits (float16, the network's grid),
        resampled back with the plans' own function one class at a time, then softmax, the non-zero crop
        undone (background 1 outside) and the transpose reverted, a few planes at a time. What nnU-Net's
        convert_predicted_logits_to_segmentation_with_correct_shape does on the whole volume at once
        (C x V float64, then twice C x V float32); per voxel the same numbers."""
        predictor, properties = prepared.predictor, prepared.properties
        if predictor.loaded_member != spec.member:
            self.network.load_state_dict(self.weights[spec.member])
            predictor.loaded_member = spec.member
        predictor.flip_axes, predictor.dropout = tuple(spec.flip), spec.dropout
        logits = predictor.predict_sliding_window_return_logits(torch.from_numpy(prepared.data.load())).cpu()
        logits = self._resampled_back(logits, properties, prepared.scratch)  # in a file when large
        backward = self.plans_manager.transpose_backward
        full = properties["shape_before_cropping"]  # transposed axes, as the bbox
        bbox = properties["bbox_used_for_cropping"]
        axis = backward.index(0)  # the transposed first axis is this axis of the (z, y, x) array
        planes = max(1, SLAB_VOXELS // int(np.prod(full[1:])))
        try:
            for start in range(0, full[0], planes):
                stop = min(start + planes, full[0])
                slab = torch.zeros((logits.shape[0], stop - start, *full[1:]))
                slab[0] = 1.0  # background outside the crop, as nnU-Net's revert_cropping_on_probabilities
                lo, hi = max(start, bbox[0][0]), min(stop, bbox[0][1])
                if lo < hi:
                    inside = (slice(None), slice(lo - start, hi - start), *(slice(a, b) for a, b in bbox[1:]))
                    part = logits.planes(lo - bbox[0][0], hi - bbox[0][0])
                    slab[inside] = self.label_manager.apply_inference_nonlin(torch.as_tensor(part))
                region = [slice(None)] * 3
                region[axis] = slice(start, stop)
                yield tuple(region), slab.permute(0, *[i + 1 for i in backward])
        finally:
            logits.delete()

    def _resampled_back(self, logits: torch.Tensor, properties: dict, scratch: Path | None) -> RawArray | InMemoryArray:
        """(C, *cropped shape) float16 logits on the input's spacing, as nnU-Net's (its plans' resampling
        function, called on one class at a time: it resamples each class on its own, so the result is the
        same), kept in a file in ``scratch`` when large (spill_if_large)."""
        cm, pm = self.configuration_manager, self.plans_manager
        target = properties["shape_after_cropping_and_before_resampling"]
        if tuple(logits.shape[1:]) == tuple(target):
            return spill_if_large(logits.numpy(), scratch, "nnunet-logits")  # nnU-Net's function returns its input then
        spacing = [properties["spacing"][i] for i in pm.transpose_forward]
        current = cm.spacing if len(cm.spacing) == len(target) else [spacing[0], *cm.spacing]
        shape = (logits.shape[0], *target)
        if scratch is not None and math.prod(shape) * 2 >= spill.SPILL_BYTES:
            out = SlabWriter(Path(scratch) / f"nnunet-logits-{uuid.uuid4().hex[:8]}.raw", shape, np.float16)
            try:
                for c in range(logits.shape[0]):
                    out.append(cm.resampling_fn_probabilities(logits[c:c + 1], target, current, spacing))
            except BaseException:
                out.abort()
                raise
            return out.close()
        resampled = np.empty(shape, dtype=np.float16)
        for c in range(logits.shape[0]):
            resampled[c] = cm.resampling_fn_probabilities(logits[c:c + 1], target, current, spacing)[0]
        return InMemoryArray(resampled)


@dataclass
class _Prepared:
    """What ``prepare`` hands to every pass: nnU-Net's predictor, the preprocessed (1, *S') input and its
    properties (nnU-Net's: bbox, shapes, spacing), the input's (z, y, x) shape, the scratch folder."""

    predictor: object
    data: RawArray | InMemoryArray
    properties: dict
    shape: tuple[int, int, int]
    scratch: Path | None


def _one_pass_predictor(base: type, device: torch.device):
    """nnU-Net's predictor with its mirroring replaced by one given flip (and dropout on if asked):
    tile positions, Gaussian blending and float16 sums stay nnU-Net's own."""

    class OnePassPredictor(base):
        flip_axes: tuple[int, ...] = ()
        dropout: bool = False

        @torch.inference_mode()
        def _internal_maybe_mirror_and_predict(self, x: torch.Tensor) -> torch.Tensor:
            set_dropout(self.network, self.dropout)
            if not self.flip_axes:
                return self.network(x)
            axes = [a + 2 for a in self.flip_axes]
            return torch.flip(self.network(torch.flip(x, axes)), axes)

    with contextlib.redirect_stdout(io.StringIO()):  # its constructor prints a note about CPU devices
        return OnePassPredictor(tile_step_size=0.5, use_gaussian=True, use_mirroring=False,
                                perform_everything_on_device=device.type == "cuda", device=device,
                                allow_tqdm=False)


def load(path: Path, name: str | None = None) -> NnUNetModel:
    """The nnU-Net model at ``path`` (a trained-model folder, or a dataset folder holding one)."""
    folder = nnunet_model_folder(Path(path))
    if folder is None:
        raise ModelError(f"{path} is not an nnU-Net v2 trained-model folder")
    return NnUNetModel(folder, name)


def check(path: Path) -> ModelSummary:
    """The nnU-Net format's checker: load the folder as segmenting would (every fold's checkpoint, the
    network built from plans.json). Its files, relative to ``path``, are exactly what the model needs:
    dataset.json, plans.json, each fold's checkpoint in use (and score_reference.json if present)."""
    model = load(path)
    folder = model.folder
    names = ["dataset.json", "plans.json", *(c.relative_to(folder).as_posix() for _, c in model.folds)]
    if (folder / SCORE_REFERENCE).is_file():
        names.append(SCORE_REFERENCE)
    prefix = folder.relative_to(path)
    d = model.description
    return ModelSummary(d.name, NNUNET, d.modality, d.labels, len(d.members), d.methods,
                        tuple((prefix / n).as_posix() for n in names), d.version, d.task)
