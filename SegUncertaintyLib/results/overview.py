"""An overview PNG: three orthogonal slices through the segmentation with contour and heat maps."""

from __future__ import annotations

from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402
import SimpleITK as sitk  # noqa: E402


def _slices(volume: np.ndarray, centre: tuple[int, int, int]) -> list[np.ndarray]:
    """Axial, coronal, sagittal slices of a (z, y, x) array, each oriented with the up axis first."""
    z, y, x = centre
    return [volume[z], volume[:, y, :], volume[:, :, x]]


def _centre(mask: np.ndarray) -> tuple[int, ...]:
    """The (z, y, x) index of the mask's centroid (the volume's centre when empty), from per-axis counts."""
    total = int(mask.sum())
    if not total:
        return tuple(n // 2 for n in mask.shape)
    axes = range(mask.ndim)
    return tuple(int(np.dot(np.arange(n), mask.sum(axis=tuple(a for a in axes if a != i))) / total)
                 for i, n in enumerate(mask.shape))


def save_overview(outputs, path: Path, title: str = "") -> None:
    """Write the figure to ``path`` (model grid: axis-aligned, so the slices are true planes)."""
    image = outputs.model_grid_image
    array = sitk.GetArrayViewFromImage(image)
    labels = outputs.model_grid_labels
    spacing = image.GetSpacing()  # x, y, z
    centre = _centre(labels > 0)
    maps = []  # (name, its three slices, its maximum): one volume in memory at a time (they may be files)
    for name in ("entropy", "mutual_information", "variance"):
        if name in outputs.model_grid_maps:
            volume = outputs.model_grid_maps[name]
            maps.append((name, [s.copy() for s in _slices(volume, centre)], max(float(volume.max()), 1e-6)))
            del volume
    aspects = [spacing[1] / spacing[0], spacing[2] / spacing[0], spacing[2] / spacing[1]]
    fig, axes = plt.subplots(3, 1 + len(maps), figsize=(3.2 * (1 + len(maps)), 9.5), squeeze=False)
    views = zip(_slices(array, centre), _slices(labels, centre), aspects, strict=True)
    for row, (img, lab, aspect) in enumerate(views):
        ax = axes[row, 0]
        ax.imshow(img, cmap="gray", origin="lower", aspect=aspect)
        if lab.any():
            ax.contour(lab > 0, levels=[0.5], colors="lime", linewidths=0.8, origin="lower")
        for col, (name, slices, vmax) in enumerate(maps, start=1):
            axes[row, col].imshow(img, cmap="gray", origin="lower", aspect=aspect)
            heat = axes[row, col].imshow(np.ma.masked_less(slices[row], 0.02 * vmax),
                                         cmap="inferno", origin="lower", aspect=aspect, vmin=0, vmax=vmax, alpha=0.85)
            if row == 0:
                axes[row, col].set_title(name.replace("_", " "))
                fig.colorbar(heat, ax=axes[:, col], shrink=0.6, location="bottom")
        if row == 0:
            ax.set_title("image + segmentation")
    for ax in axes.ravel():
        ax.set_xticks([])
        ax.set_yticks([])
    fig.suptitle(title, fontsize=9)
    tmp = path.with_name(f".{path.name}.tmp.png")
    fig.savefig(tmp, dpi=90)
    plt.close(fig)
    tmp.replace(path)
