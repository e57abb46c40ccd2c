"""A tiny nnU-Net v2 trained-model folder made on the spot, and nnunetv2's own predictor as the oracle.

The plans follow nnunetv2's plans.json format (3d_fullres, 2d, or 3d_lowres with its 3d_cascade_fullres,
PlainConvUNet from its network builder); the weights are the builder's initialization with a fixed seed per
fold (no training). Checkpoints are saved as nnUNetTrainer saves them, numpy scalars included.
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import SimpleITK as sitk
import torch

CT_PROPERTIES = {"max": 1000.0, "mean": 80.0, "median": 60.0, "min": -1000.0, "percentile_00_5": -900.0,
                 "percentile_99_5": 900.0, "std": 250.0}


def _architecture(features, d: int, dropout: float | None) -> dict:
    """A PlainConvUNet as nnU-Net's plans describe it: one conv per stage, strides 2 below the first stage."""
    n = len(features)
    return {
        "network_class_name": "dynamic_network_architectures.architectures.unet.PlainConvUNet",
        "arch_kwargs": {
            "n_stages": n, "features_per_stage": list(features), "conv_op": f"torch.nn.modules.conv.Conv{d}d",
            "kernel_sizes": [[3] * d] * n, "strides": [[1] * d] + [[2] * d] * (n - 1),
            "n_conv_per_stage": [1] * n, "n_conv_per_stage_decoder": [1] * (n - 1), "conv_bias": True,
            "norm_op": f"torch.nn.modules.instancenorm.InstanceNorm{d}d",
            "norm_op_kwargs": {"eps": 1e-05, "affine": True},
            "dropout_op": f"torch.nn.modules.dropout.Dropout{d}d" if dropout else None,
            "dropout_op_kwargs": {"p": dropout, "inplace": False} if dropout else None,
            "nonlin": "torch.nn.LeakyReLU", "nonlin_kwargs": {"inplace": True},
        },
        "_kw_requires_import": ["conv_op", "norm_op", "dropout_op", "nonlin"],
    }


def tiny_plans(spacing=(1.0, 1.0, 1.0), transpose_forward=(0, 1, 2), normalization="CTNormalization",
               dropout: float | None = None, patch_size=(16, 16, 16), features=(4, 8, 16),
               configuration: str = "3d_fullres", lowres_spacing=(2.0, 2.0, 2.0), lowres_patch_size=(8, 8, 8),
               lowres_features=(6, 12)) -> dict:
    """plans.json content; spacing and patch size are in the transposed axis order, as nnU-Net writes them.
    ``configuration`` "2d": a 2D network on the in-plane axes (the last two of ``spacing`` and ``patch_size``),
    as nnU-Net plans its 2d configuration. "3d_lowres": the 3d_fullres configuration (``spacing``,
    ``patch_size``, ``features``) plus a 3d_lowres one that inherits from it with its own coarser
    ``lowres_spacing``, patch size, data identifier and network, ``next_stage`` 3d_cascade_fullres, and the
    3d_cascade_fullres configuration (3d_fullres with ``previous_stage`` 3d_lowres): the configurations
    nnunetv2 plans for a dataset whose images are large against the fullres patch (the lowres entry written
    in the compact ``inherits_from`` form of nnunetv2's add_lowres_and_cascade; the configurations'
    order is the planner's)."""
    backward = [int(i) for i in np.argsort(transpose_forward)]
    d = 2 if configuration == "2d" else 3
    if d == 2:
        spacing, patch_size = spacing[1:], patch_size[1:]
    arch = _architecture(features, d, dropout)
    resampling = {"resampling_fn_data": "resample_data_or_seg_to_shape",
                  "resampling_fn_seg": "resample_data_or_seg_to_shape",
                  "resampling_fn_data_kwargs": {"is_seg": False, "order": 3, "order_z": 0, "force_separate_z": None},
                  "resampling_fn_seg_kwargs": {"is_seg": True, "order": 1, "order_z": 0, "force_separate_z": None},
                  "resampling_fn_probabilities": "resample_data_or_seg_to_shape",
                  "resampling_fn_probabilities_kwargs": {"is_seg": False, "order": 1, "order_z": 0,
                                                         "force_separate_z": None}}
    fullres_name = "3d_fullres" if configuration == "3d_lowres" else configuration
    configurations = {fullres_name: {
        "data_identifier": f"nnUNetPlans_{fullres_name}", "preprocessor_name": "DefaultPreprocessor",
        "batch_size": 2, "patch_size": list(patch_size), "median_image_size_in_voxels": [24] * d,
        "spacing": list(spacing), "normalization_schemes": [normalization], "use_mask_for_norm": [False],
        **resampling, "architecture": arch, "batch_dice": configuration == "3d_lowres"}}
    if configuration == "3d_lowres":
        lowres_shape = [round(24 * f / c) for f, c in zip(spacing, lowres_spacing, strict=True)]
        configurations = {
            "3d_lowres": {"inherits_from": "3d_fullres", "data_identifier": "nnUNetPlans_3d_lowres",
                          "patch_size": list(lowres_patch_size), "median_image_size_in_voxels": lowres_shape,
                          "spacing": list(lowres_spacing), "architecture": _architecture(lowres_features, 3, dropout),
                          "batch_dice": False, "next_stage": "3d_cascade_fullres"},
            **configurations,
            "3d_cascade_fullres": {"inherits_from": "3d_fullres", "previous_stage": "3d_lowres"}}
    return {
        "dataset_name": "Dataset999_Tiny", "plans_name": "nnUNetPlans",
        "original_median_spacing_after_transp": list(spacing), "original_median_shape_after_transp": [24, 24, 24],
        "image_reader_writer": "SimpleITKIO", "transpose_forward": list(transpose_forward),
        "transpose_backward": backward, "experiment_planner_used": "ExperimentPlanner",
        "label_manager": "LabelManager",
        "foreground_intensity_properties_per_channel": {"0": CT_PROPERTIES},
        "configurations": configurations,
    }


def tiny_dataset_json(n_classes: int = 3, channels=None) -> dict:
    labels = {"background": 0, **{f"organ{k}": k for k in range(1, n_classes)}}
    return {"channel_names": channels or {"0": "CT"}, "labels": labels, "numTraining": 2, "file_ending": ".nii.gz"}


def build_network(plans: dict, configuration: str, n_inputs: int = 1, n_classes: int = 3) -> torch.nn.Module:
    """nnunetv2's own network builder, as nnUNetTrainer.build_network_architecture calls it, for the
    configuration as nnunetv2's PlansManager resolves it (``inherits_from`` included)."""
    from nnunetv2.utilities.get_network_from_plans import get_network_from_plans
    from nnunetv2.utilities.plans_handling.plans_handler import PlansManager

    cm = PlansManager(plans).get_configuration(configuration)
    return get_network_from_plans(cm.network_arch_class_name, cm.network_arch_init_kwargs,
                                  cm.network_arch_init_kwargs_req_import, n_inputs, n_classes, allow_init=True,
                                  deep_supervision=False)


def make_nnunet_model(root: Path, folds: int = 2, mirror_axes=(0, 1, 2), trainer: str = "nnUNetTrainer",
                      plans: dict | None = None, dataset_json: dict | None = None,
                      checkpoint_name: str = "checkpoint_final.pth",
                      configuration: str | None = None) -> tuple[Path, list[dict]]:
    """Write Dataset999_Tiny/<trainer>__nnUNetPlans__<configuration> under ``root`` (default: the plans'
    first configuration); return it and the per-fold state dicts (fold f initialized with seed f; last
    layer scaled so classes separate). Input channels as nnunetv2 counts them (a cascade stage also takes
    the previous stage's one-hot segmentation)."""
    from nnunetv2.utilities.label_handling.label_handling import determine_num_input_channels
    from nnunetv2.utilities.plans_handling.plans_handler import PlansManager

    plans = plans or tiny_plans()
    configuration = configuration or next(iter(plans["configurations"]))
    dataset_json = dataset_json or tiny_dataset_json()
    n_classes = len(dataset_json["labels"])
    manager = PlansManager(plans)
    n_inputs = determine_num_input_channels(manager, manager.get_configuration(configuration), dataset_json)
    folder = Path(root) / "Dataset999_Tiny" / f"{trainer}__nnUNetPlans__{configuration}"
    folder.mkdir(parents=True)
    (folder / "plans.json").write_text(json.dumps(plans, indent=1))
    (folder / "dataset.json").write_text(json.dumps(dataset_json, indent=1))
    weights = []
    for fold in range(folds):
        torch.manual_seed(fold)
        net = build_network(plans, configuration, n_inputs, n_classes)
        with torch.no_grad():  # sharper outputs than the raw initialization, so argmax is meaningful
            net.decoder.seg_layers[-1].weight.mul_(4.0)
        state = net.state_dict()
        weights.append(state)
        checkpoint = {
            "network_weights": state, "optimizer_state": {}, "grad_scaler_state": None,
            "logging": {"mean_fg_dice": [np.float64(0.5), np.float64(0.6)], "ema_fg_dice": [np.float32(0.55)],
                        "epoch_start_timestamps": [1.0e9]},
            "_best_ema": np.float64(0.6), "current_epoch": np.int64(1000),
            "init_args": {"plans": plans, "configuration": configuration, "fold": fold,
                          "dataset_json": dataset_json, "device": torch.device("cpu")},
            "trainer_name": trainer, "inference_allowed_mirroring_axes": mirror_axes,
        }
        (folder / f"fold_{fold}").mkdir()
        torch.save(checkpoint, folder / f"fold_{fold}" / checkpoint_name)
    return folder, weights


def ct_like_image(shape_zyx=(20, 26, 22), spacing_xyz=(1.0, 1.0, 1.0), seed: int = 0) -> sitk.Image:
    """A float32 CT-like volume: air border (zeros outside a box, so nnU-Net crops), soft tissue, a bright blob."""
    rng = np.random.default_rng(seed)
    z, y, x = np.meshgrid(*[np.arange(s, dtype=np.float32) for s in shape_zyx], indexing="ij")
    centre = [s / 2 for s in shape_zyx]
    r = np.sqrt(((z - centre[0]) / shape_zyx[0]) ** 2 + ((y - centre[1]) / shape_zyx[1]) ** 2
                + ((x - centre[2]) / shape_zyx[2]) ** 2)
    array = np.where(r < 0.45, 40.0, -800.0) + np.where(r < 0.2, 500.0, 0.0) + rng.normal(0, 30, shape_zyx)
    array[:2] = 0.0  # an all-zero slab: nnU-Net's crop to non-zero removes it
    image = sitk.GetImageFromArray(array.astype(np.float32))
    image.SetSpacing(spacing_xyz)
    image.SetOrigin((10.0, -5.0, 3.0))
    image.SetDirection((0.0, 1.0, 0.0, -1.0, 0.0, 0.0, 0.0, 0.0, 1.0))  # rotated: nnU-Net ignores it
    return image


def nnunet_reference(folder: Path, weights: dict, image: sitk.Image, trainer: str = "nnUNetTrainer",
                     mirror_axes=None) -> np.ndarray:
    """nnunetv2's own nnUNetPredictor for one fold of the folder's configuration (its name's last part):
    (C, z, y, x) probabilities on the image's grid."""
    from nnunetv2.inference.predict_from_raw_data import nnUNetPredictor
    from nnunetv2.utilities.plans_handling.plans_handler import PlansManager

    plans = json.loads((folder / "plans.json").read_text())
    dataset_json = json.loads((folder / "dataset.json").read_text())
    manager = PlansManager(plans)
    name = folder.name.split("__")[-1]
    net = build_network(plans, name, 1, len(dataset_json["labels"]))
    predictor = nnUNetPredictor(tile_step_size=0.5, use_gaussian=True, use_mirroring=mirror_axes is not None,
                                perform_everything_on_device=False, device=torch.device("cpu"), allow_tqdm=False)
    configuration = manager.get_configuration(name)
    predictor.manual_initialization(net, manager, configuration, [weights], dataset_json, trainer, mirror_axes)
    array = sitk.GetArrayFromImage(image).astype(np.float32)[None]
    _, probabilities = predictor.predict_single_npy_array(array, {"spacing": list(image.GetSpacing())[::-1]},
                                                          None, None, True)
    return probabilities
