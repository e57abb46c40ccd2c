"""MONAI bundles (configs/inference.json, configs/metadata.json, models/model.pt or models/model.ts).

Everything is read with monai.bundle's own ConfigParser and run as the bundle says: its network_def,
its preprocessing transforms (reading the image from a temporary NIfTI with the bundle's own loader),
its inferer (window and overlap) and its postprocessing transforms up to the first discretization or
saving step, Invertd included, so probabilities come back on the input's grid. A softmax is inserted
first only when the bundle's own postprocessing applies no activation (never a double softmax).
"""

from __future__ import annotations

import tempfile
import warnings
from pathlib import Path

import numpy as np
import SimpleITK as sitk
import torch

from ...core.errors import ModelError
from ...core.files import sha256_file
from ...core.methods import SampleSpec, check_capable, plan_samples
from ..card import Member
from ..description import ModelDescription
from ..dropout import count_active_dropout, set_dropout
from ..registry import MONAI_BUNDLE, ModelSummary, bundle_config
from .base import WholeVolumeModel

STOP_TRANSFORMS = ("AsDiscreted", "SaveImaged", "KeepLargestConnectedComponentd", "FillHolesd")


def _config_file(folder: Path) -> Path:
    config = bundle_config(folder)
    if config is None:
        raise ModelError(f"MONAI bundle {folder.name}: no configs/inference.json")
    if not (folder / "configs" / "metadata.json").is_file():
        raise ModelError(f"MONAI bundle {folder.name}: no configs/metadata.json (labels and input channels "
                         "are read from it)")
    return config


class MonaiBundleModel(WholeVolumeModel):
    """A MONAI bundle run by its own configuration; MC dropout where the network has dropout layers."""

    format = MONAI_BUNDLE

    def __init__(self, folder: Path, name: str | None = None):
        """``name``: what the model is called (the name it is installed under); None: the bundle's own name."""
        from monai.bundle import ConfigParser

        self.folder = Path(folder)
        parser = ConfigParser()
        config = _config_file(self.folder)
        try:
            parser.read_meta(str(self.folder / "configs" / "metadata.json"))
            parser.read_config(str(config))
            parser["bundle_root"] = str(self.folder)
            self.network = parser.get_parsed_content("network_def", instantiate=True)
            self.preprocessing = parser.get_parsed_content("preprocessing", instantiate=True)
            self.inferer = parser.get_parsed_content("inferer", instantiate=True)
            post = parser.get_parsed_content("postprocessing", instantiate=True) if "postprocessing" in parser else None
        except ModelError:
            raise
        except Exception as exc:  # config errors surface as many types
            raise ModelError(f"MONAI bundle {self.folder.name}: cannot parse its configuration "
                             f"({type(exc).__name__}: {str(exc).strip().splitlines()[0] if str(exc).strip() else ''})"
                             ) from exc
        self.meta = parser.get("_meta_#network_data_format", None) or {}
        self.weights_path = self._load_weights()
        self.postprocessing = self._probability_postprocessing(post)
        self.n_dropout = count_active_dropout(self.network)
        self.description = self._describe(parser, name)

    def _load_weights(self) -> Path:
        models = self.folder / "models"
        pt, ts = models / "model.pt", models / "model.ts"
        if pt.is_file():
            try:
                state = torch.load(pt, map_location="cpu", weights_only=True)
                state = state.get("model", state) if isinstance(state, dict) else state
                self.network.load_state_dict(state)
            except Exception as exc:
                raise ModelError(f"MONAI bundle {self.folder.name}: models/model.pt does not fit network_def "
                                 f"({str(exc).strip().splitlines()[0]})") from exc
            self.network.eval()
            return pt
        if ts.is_file():
            with warnings.catch_warnings():
                warnings.simplefilter("ignore", DeprecationWarning)
                try:
                    self.network = torch.jit.load(str(ts), map_location="cpu").eval()
                except (RuntimeError, ValueError) as exc:
                    raise ModelError(f"MONAI bundle {self.folder.name}: cannot load models/model.ts: {exc}") from exc
            return ts
        raise ModelError(f"MONAI bundle {self.folder.name}: neither models/model.pt nor models/model.ts")

    def _probability_postprocessing(self, post):
        """The bundle's own postprocessing up to the first discretization/saving step; softmax first if
        it applies no activation of its own."""
        from monai.transforms import Activationsd, Compose

        transforms = []
        for t in (post.transforms if post is not None else []):
            if type(t).__name__ in STOP_TRANSFORMS:
                break
            transforms.append(t)
        if not any(isinstance(t, Activationsd) for t in transforms):
            transforms.insert(0, Activationsd(keys="pred", softmax=True))
        return Compose(transforms)

    def _describe(self, parser, name: str | None) -> ModelDescription:
        """Names and labels from the bundle's metadata; ``info`` also holds the inferer's roi_size (x, y, z)."""
        outputs = (self.meta.get("outputs") or {}).get("pred") or {}
        inputs = (self.meta.get("inputs") or {}).get("image") or {}
        channel_def = outputs.get("channel_def") or {}
        try:
            labels = {int(k): str(v) for k, v in channel_def.items()}
        except ValueError as exc:
            raise ModelError(f"MONAI bundle {self.folder.name}: metadata channel_def keys must be integers") from exc
        if len(labels) < 2 or sorted(labels) != list(range(len(labels))):
            raise ModelError(f"MONAI bundle {self.folder.name}: metadata.json network_data_format.outputs.pred."
                             "channel_def must name classes 0..C-1 (C >= 2)")
        if int(inputs.get("num_channels", 1)) != 1:
            raise ModelError(f"MONAI bundle {self.folder.name} needs {inputs.get('num_channels')} input channels; "
                             "SegUncertainty segments one image (one channel)")
        roi = getattr(self.inferer, "roi_size", None) or inputs.get("spatial_shape") or [1, 1, 1]
        methods = ("softmax", "mc_dropout") if self.n_dropout else ("softmax",)
        meta = parser.get("_meta_", {}) or {}
        return ModelDescription(
            name=name or str(meta.get("name", self.folder.name)), version=str(meta.get("version", "0")),
            task=str(meta.get("task", "")), modality=str(inputs.get("modality", "")), labels=labels,
            methods=methods, format=MONAI_BUNDLE, folder=self.folder,
            members=(Member(self.weights_path, sha256_file(self.weights_path)),),
            info={"format": MONAI_BUNDLE, "roi_size": tuple(int(r) for r in roi)},
        )

    # --- the adapter contract -------------------------------------------------------------------------

    def plan(self, method: str, samples: int | None) -> list[SampleSpec]:
        """The bundle's own refusals (one network, no declared flips, no dropout), then the library's plan."""
        one = "has one network and no declared test-time flips; use softmax or mc_dropout"
        m = check_capable(method, f"MONAI bundle {self.folder.name}", members=1, flips=False,
                          dropout=bool(self.n_dropout), reasons={
                              "ensemble": one, "tta": one,
                              "mc_dropout": "has no dropout layer with p > 0: MC dropout is impossible"})
        return plan_samples(m, 1, samples)

    def describe(self, spec: SampleSpec) -> str:
        return "dropout sample" if spec.dropout else "deterministic pass"

    def prepare(self, image: sitk.Image, device: torch.device, scratch: Path | None = None):
        with tempfile.TemporaryDirectory() as tmp:
            path = Path(tmp) / "image.nii.gz"
            sitk.WriteImage(image, str(path))
            data = self.preprocessing({"image": str(path)})
        self.network.to(device)
        return data, device, tuple(reversed(image.GetSize()))

    @torch.no_grad()
    def run_pass(self, prepared, spec: SampleSpec) -> np.ndarray:
        data, device, shape = prepared
        set_dropout(self.network, spec.dropout)
        item = dict(data)
        item["pred"] = self.inferer(item["image"][None].to(device), self.network)[0].cpu()
        item = self.postprocessing(item)
        pred = np.asarray(item["pred"].detach().cpu().numpy() if torch.is_tensor(item["pred"]) else item["pred"])
        pred = pred.transpose(0, *range(pred.ndim - 1, 0, -1))  # MONAI's (C, x, y, z) -> (C, z, y, x)
        if pred.shape[1:] != shape:
            raise ModelError(f"MONAI bundle {self.folder.name}: its inverted output has shape {pred.shape[1:]}, "
                             f"the input {shape}: its postprocessing lacks Invertd")
        return np.clip(pred, 0.0, 1.0).astype(np.float32)



def load(path: Path, name: str | None = None) -> MonaiBundleModel:
    """The MONAI bundle in the folder ``path``."""
    return MonaiBundleModel(Path(path), name)


def check(path: Path) -> ModelSummary:
    """The MONAI bundle format's checker: parse and load it as segmenting would. Its files are every
    regular file in configs/ and the weights in use (models/model.pt or models/model.ts)."""
    model = MonaiBundleModel(Path(path))
    configs = sorted(p.relative_to(path).as_posix() for p in (Path(path) / "configs").iterdir()
                     if p.is_file() and not p.is_symlink())
    d = model.description
    return ModelSummary(d.name, MONAI_BUNDLE, d.modality, d.labels, len(d.members), d.methods,
                        (*configs, model.weights_path.relative_to(path).as_posix()), d.version, d.task)
