"""Synthetic phantoms with a known, tunable boundary ambiguity."""

from __future__ import annotations

import numpy as np
import SimpleITK as sitk


def sphere_phantom(size=(40, 36, 32), spacing=(2.0, 2.5, 3.0), radius_mm=25.0, blur_mm=3.0,
                   direction=None, origin=(-40.0, -45.0, -48.0), noise=0.0, seed=0) -> sitk.Image:
    """A bright sphere (1) on dark background (0) whose edge is a logistic ramp of width ``blur_mm``.

    Voxel values are 1 / (1 + exp((r - radius) / blur)), so the 0.5 level set is the sphere of radius
    ``radius_mm`` around the image centre, in physical space (any spacing and direction).
    """
    image = sitk.Image(list(size), sitk.sitkFloat32)
    image.SetSpacing(spacing)
    image.SetOrigin(origin)
    if direction is not None:
        image.SetDirection(direction)
    idx = np.stack(np.meshgrid(*[np.arange(n) for n in size], indexing="ij"), -1).reshape(-1, 3)
    d = np.array(image.GetDirection()).reshape(3, 3)
    pts = np.array(origin) + (idx * np.array(spacing)) @ d.T
    centre = np.array(image.TransformContinuousIndexToPhysicalPoint([(n - 1) / 2 for n in size]))
    r = np.linalg.norm(pts - centre, axis=1)
    values = 1.0 / (1.0 + np.exp((r - radius_mm) / blur_mm))
    values = values + np.random.default_rng(seed).normal(0, noise, values.shape) if noise else values
    array = values.reshape(size).transpose(2, 1, 0).astype(np.float32)  # (x,y,z) -> (z,y,x)
    out = sitk.GetImageFromArray(array)
    out.CopyInformation(image)
    return out
