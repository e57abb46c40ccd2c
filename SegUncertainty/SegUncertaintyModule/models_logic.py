"""The logic's models and packages: the model list (every bundled and installed model, the unusable ones with
their reason), "Add model...", the CPU time estimate, and installing torch and the other packages on first use."""

from __future__ import annotations

import importlib.metadata
import importlib.util
import logging
import tempfile
from dataclasses import dataclass
from pathlib import Path

import slicer
from slicer.i18n import tr as _

from . import process

# Installed on first use, after asking (torch itself through the PyTorch extension).
PIP_REQUIREMENTS = {"monai": "monai>=1.4", "SimpleITK": "SimpleITK>=2.3", "scipy": "scipy>=1.10",
                    "matplotlib": "matplotlib>=3.7", "jsonschema": "jsonschema>=4.18",
                    "psutil": "psutil>=5.9"}
# What an optional model format needs (pyproject's extras 'nnunet' and 'onnx'), installed when such a model is
# added or run, after asking: format -> (module, requirement).
FORMAT_REQUIREMENTS = {"nnunet": ("nnunetv2", "nnunetv2>=2.8.1"), "onnx": ("onnxruntime", "onnxruntime>=1.17")}
# The torch distributions the PyTorch extension installs together; pip must not replace them (a CPU-only
# build on Windows, a build the driver cannot run, or one other extensions were not built against).
TORCH_DISTRIBUTIONS = ("torch", "torchvision", "torchaudio")


@dataclass(frozen=True)
class ModelChoice:
    """One entry of the panel's model list: a usable model, or one that cannot be used and says why."""

    name: str
    usable: bool
    tooltip: str  # what the model is, or why it cannot be used
    argument: str = ""  # what the command line's --model gets: the name (card models) or the model folder


def oneLine(exc: BaseException) -> str:
    """An exception as the one line a user sees (the library's messages are one line already)."""
    text = str(exc).strip()
    return text.splitlines()[0] if text else type(exc).__name__


class ModelsLogic:
    """Mixed into SegUncertaintyLogic; keeps ``self._plans`` (model -> (members, flip axes) or None),
    ``self._formats`` (model -> format, since the last listing) and ``self._cuda`` (whether torch sees a GPU;
    None until asked)."""

    def modelNames(self) -> list[str]:
        """Names of the models that can be run."""
        return [choice.name for choice in self.modelChoices() if choice.usable]

    def modelChoices(self, current: str | None = None) -> list[ModelChoice]:
        """Every bundled and installed model (catalog.list_models), bundled first; a broken one is listed with
        its reason and hides no other. ``current`` (the parameter) is listed even when it is not installed."""
        from SegUncertaintyLib.models import catalog
        from SegUncertaintyLib.models.registry import format_label, format_named

        usableCards = {folder: name for name, folder in catalog.available_models().items()}
        choices: dict[str, ModelChoice] = {}
        self._formats.clear()  # a model removed or added meanwhile (e.g. from the command line)
        for entry in catalog.list_models():
            if entry.error is None or entry.folder in usableCards:
                # (a bundled card is usable before jsonschema is installed: loading it checks it)
                name = entry.name if entry.error is None else usableCards[entry.folder]
                info = entry.as_dict()
                tooltip = _("{format} ({source}): {modality}; {members} member(s); methods: {methods}").format(
                    format=format_label(entry.format), source=entry.source,
                    modality=info["modality"] or "?", members=info["members"] or "?",
                    methods=", ".join(info["methods"] or []) or "?")
                byName = entry.format is not None and format_named(entry.format).has_card  # card and ONNX models
                choice = ModelChoice(name, True, tooltip, name if byName else str(entry.folder))
            else:
                choice = ModelChoice(entry.name, False, _("Cannot be used: {reason} ({folder})").format(
                    reason=entry.error, folder=entry.folder))
            if choice.name in choices:
                choice = ModelChoice(choice.name, False, _("Another model has the name '{name}' ({folder})").format(
                    name=choice.name, folder=entry.folder))
                choices.setdefault(f"{choice.name} ({entry.folder})", choice)
            else:
                choices[choice.name] = choice
        if current and current not in choices:
            choices[current] = ModelChoice(current, False, _("Model '{name}' is not installed here").format(
                name=current))
        return list(choices.values())

    def modelChoice(self, name: str) -> ModelChoice:
        """The usable model ``name``; RuntimeError with the reason when it cannot be used."""
        choice = next((c for c in self.modelChoices(name) if c.name == name), None)
        if choice is None or not choice.usable:
            raise RuntimeError(_("Model '{name}' cannot be used. {reason}").format(
                name=name, reason=choice.tooltip if choice else ""))
        return choice

    def addModel(self, path: str) -> str:
        """Check and install the model at ``path`` (a model folder, or its card.json) with manage.add_model,
        the code `seguncertainty models add` runs; returns its name. On failure nothing is installed and a
        RuntimeError carries the one-line reason."""
        from SegUncertaintyLib.models import manage

        source = Path(path)
        if source.is_file() and source.name == "card.json":
            source = source.parent
        try:
            name, _folder = manage.add_model(source)
        except Exception as exc:  # a model's checker may raise anything; the user gets its one line
            logging.debug("adding model %s failed", source, exc_info=True)
            raise RuntimeError(oneLine(exc)) from exc
        self._plans.pop(name, None)
        return name

    def backendFor(self, model: str, backend: str, precision: str) -> tuple[str, str, str]:
        """(backend, precision, reason) for a run of ``model``: as asked for a card model (reason ""); torch at
        precision auto for a whole-volume model (a format without a card: nnU-Net, MONAI bundle), which runs
        its framework's own predictor (the library refuses other backends, exit 2), with the reason."""
        from SegUncertaintyLib.models.registry import format_label, format_named

        if model not in self._formats:
            self._formats[model] = self.modelFormat(model)
        fmt = self._formats[model]
        if fmt is None or format_named(fmt).has_card:
            return backend, precision, ""
        return "torch", "auto", _("{format} models run on torch at their own precision: only models with a "
                                  "card (SegUncertainty card, ONNX) choose a backend.").format(format=format_label(fmt))

    def samplingPlan(self, model: str) -> tuple[int, tuple[int, ...]] | None:
        """(ensemble members, TTA flip axes) of a card model, for the time estimate; None if unknown."""
        if model not in self._plans:
            from SegUncertaintyLib.models.card import load_card
            from SegUncertaintyLib.models.catalog import available_models

            try:
                card = load_card(available_models()[model])
                self._plans[model] = (len(card.members), card.flip_axes)
            except Exception:  # not a usable card model (or no jsonschema yet): no estimate
                self._plans[model] = None
        return self._plans[model]

    def deviceWarning(self, volume, model: str, method: str, samples: int, device: str) -> str:
        """A warning with a time estimate when the run will use the CPU; empty otherwise. The passes are
        counted as the library plans them (core.methods.count_passes: members, declared flips)."""
        if device == "cuda" or (device == "auto" and self.cudaAvailable()):
            return ""
        plan = self.samplingPlan(model)
        passes = process.count_passes(method, process.samples_option(method, samples), *plan) if plan else None
        if passes is None:
            return _("Runs on the CPU; a GPU is much faster.")
        bounds = [0.0] * 6
        volume.GetRASBounds(bounds)
        litres = (bounds[1] - bounds[0]) * (bounds[3] - bounds[2]) * (bounds[5] - bounds[4]) / 1e6
        seconds = process.cpu_estimate_s(litres, passes)
        return _("Runs on the CPU: {estimate} on a 2-core machine; a GPU is much faster.").format(
            estimate=process.describe_estimate(seconds))

    def cudaAvailable(self) -> bool:
        """Whether torch sees a GPU (asked once: importing torch takes a moment; False without torch)."""
        if self._cuda is None:
            if importlib.util.find_spec("torch") is None:
                return False
            import torch

            self._cuda = bool(torch.cuda.is_available())
        return self._cuda

    @staticmethod
    def missingPackages(model: str | None = None) -> list[str]:
        """The modules not installed that a run needs; with ``model`` (a name or a model folder), also the one
        its format needs (FORMAT_REQUIREMENTS)."""
        names = ["torch", *PIP_REQUIREMENTS]
        formatPackage = FORMAT_REQUIREMENTS.get(ModelsLogic.modelFormat(model), (None,))[0] if model else None
        if formatPackage:
            names.append(formatPackage)
        return [name for name in names if importlib.util.find_spec(name) is None]

    @staticmethod
    def modelFormat(model: str) -> str | None:
        """The format of an installed model (by name) or of a model folder; None when not known."""
        from SegUncertaintyLib.models import catalog, registry

        entry = next((e for e in catalog.list_models() if e.name == model), None)
        if entry is not None:
            return entry.format
        try:
            return registry.detect_format(model) if Path(model).exists() else None
        except Exception:  # not a model folder: adding it reports why
            return None

    @staticmethod
    def torchConstraints(folder: str) -> Path | None:
        """A pip constraints file in ``folder`` pinning every installed TORCH_DISTRIBUTIONS to its installed
        version (local label included, e.g. 2.5.1+cu121), or None when torch is not installed."""
        pins = []
        for name in TORCH_DISTRIBUTIONS:
            try:
                pins.append(f"{name}=={importlib.metadata.version(name)}")
            except importlib.metadata.PackageNotFoundError:
                continue
        if not any(pin.startswith("torch==") for pin in pins):
            return None
        path = Path(tempfile.mkdtemp(prefix="SegUncertainty-pip-", dir=folder)) / "constraints.txt"
        path.write_text("\n".join(pins) + "\n")
        return path

    def ensureDependencies(self, ask: bool = True, model: str | None = None) -> bool:
        """Install missing torch (PyTorch extension) and Python packages, and the package ``model``'s format
        needs (a name or a model folder), after asking; True when ready. pip runs with the installed torch
        pinned (torchConstraints): a requirement that needs another torch fails instead of replacing it."""
        missing = self.missingPackages(model)
        if not missing:
            return True
        if ask and not slicer.util.confirmOkCancelDisplay(
                _("SegUncertainty needs these Python packages, not installed yet: {names}. Install them now? "
                  "This downloads several hundred MB once.").format(names=", ".join(missing))):
            return False
        if "torch" in missing:
            try:
                import PyTorchUtils
            except ImportError as exc:
                raise RuntimeError(_("Install the PyTorch extension from the Extensions Manager first.")) from exc
            if PyTorchUtils.PyTorchUtilsLogic().installTorch(askConfirmation=False) is None:
                raise RuntimeError(_("PyTorch could not be installed."))
        byModule = dict(PIP_REQUIREMENTS, **dict(FORMAT_REQUIREMENTS.values()))
        requirements = [byModule[name] for name in missing if name in byModule]
        if requirements:
            # slicer.packaging.pip_install(requirements, constraints=...) (Slicer 5.12: pip install -c FILE)
            slicer.util.pip_install(requirements, constraints=self.torchConstraints(slicer.app.temporaryPath))
        return not self.missingPackages(model)
