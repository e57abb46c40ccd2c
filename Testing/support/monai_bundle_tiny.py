"""A tiny MONAI bundle made on the spot, in the model zoo's layout and configuration style."""

from __future__ import annotations

import json
from pathlib import Path

import torch

INFERENCE = {
    "imports": ["$import os"],
    "bundle_root": ".",
    "output_dir": "$@bundle_root + '/eval'",
    "input_image": "",
    "datalist": "$[{'image': @input_image}]",
    "device": "$torch.device('cpu')",
    "network_def": {"_target_": "UNet", "spatial_dims": 3, "in_channels": 1, "out_channels": 3,
                    "channels": [4, 8, 16], "strides": [2, 2], "num_res_units": 1, "dropout": 0.2},
    "network": "$@network_def.to(@device)",
    "preprocessing": {"_target_": "Compose", "transforms": [
        {"_target_": "LoadImaged", "keys": "image"},
        {"_target_": "EnsureChannelFirstd", "keys": "image"},
        {"_target_": "Orientationd", "keys": "image", "axcodes": "RAS"},
        {"_target_": "Spacingd", "keys": "image", "pixdim": [1.5, 1.5, 2.0], "mode": "bilinear"},
        {"_target_": "ScaleIntensityRanged", "keys": "image", "a_min": -200, "a_max": 600, "b_min": 0.0,
         "b_max": 1.0, "clip": True},
        {"_target_": "EnsureTyped", "keys": "image"}]},
    "dataset": {"_target_": "Dataset", "data": "@datalist", "transform": "@preprocessing"},
    "dataloader": {"_target_": "DataLoader", "dataset": "@dataset", "batch_size": 1, "shuffle": False,
                   "num_workers": 0},
    "inferer": {"_target_": "SlidingWindowInferer", "roi_size": [16, 16, 16], "sw_batch_size": 2, "overlap": 0.4},
    "postprocessing": {"_target_": "Compose", "transforms": [
        {"_target_": "Activationsd", "keys": "pred", "softmax": True},
        {"_target_": "Invertd", "keys": "pred", "transform": "@preprocessing", "orig_keys": "image",
         "nearest_interp": False, "to_tensor": True},
        {"_target_": "SaveImaged", "keys": "pred", "output_dir": "@output_dir", "output_postfix": "prob",
         "resample": False, "separate_folder": False, "print_log": False},
        {"_target_": "AsDiscreted", "keys": "pred", "argmax": True}]},
    "handlers": [{"_target_": "CheckpointLoader", "load_path": "$@bundle_root + '/models/model.pt'",
                  "load_dict": {"model": "@network"}}],
    "evaluator": {"_target_": "SupervisedEvaluator", "device": "@device", "val_data_loader": "@dataloader",
                  "network": "@network", "inferer": "@inferer", "postprocessing": "@postprocessing",
                  "val_handlers": "@handlers", "amp": False},
    "run": ["$@evaluator.run()"],
}

METADATA = {
    "name": "Tiny test bundle", "version": "0.1.0", "task": "two organs",
    "network_data_format": {
        "inputs": {"image": {"type": "image", "format": "hounsfield", "modality": "CT", "num_channels": 1,
                             "spatial_shape": [16, 16, 16]}},
        "outputs": {"pred": {"type": "image", "format": "segmentation", "num_channels": 3,
                             "channel_def": {"0": "background", "1": "liver", "2": "spleen"}}}},
}


def make_bundle(root: Path, inference: dict | None = None, metadata: dict | None = None) -> Path:
    """Write the bundle under ``root/tiny_bundle`` with the UNet's seeded initialization as models/model.pt."""
    from monai.networks.nets import UNet

    folder = Path(root) / "tiny_bundle"
    (folder / "configs").mkdir(parents=True)
    (folder / "models").mkdir()
    inference = inference or INFERENCE
    (folder / "configs" / "inference.json").write_text(json.dumps(inference, indent=1))
    (folder / "configs" / "metadata.json").write_text(json.dumps(metadata or METADATA, indent=1))
    kwargs = {k: v for k, v in inference["network_def"].items() if k != "_target_"}
    torch.manual_seed(0)
    torch.save(UNet(**kwargs).state_dict(), folder / "models" / "model.pt")
    return folder
