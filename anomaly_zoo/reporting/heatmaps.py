"""PNG heatmap overlays: input | heatmap (with its colour scale) | overlay | ground truth."""

from __future__ import annotations

from pathlib import Path

import matplotlib

matplotlib.use("Agg")  # files only, never a window
import matplotlib.pyplot as plt
import numpy as np
from torchvision.transforms.v2 import functional as TF

from anomaly_zoo.data.image_dataset import load_image  # the one reader: 16-bit images are not drawn white


def save_overlay(
    image_path: str | Path,
    anomaly_map: np.ndarray,
    out_path: str | Path,
    mask: np.ndarray | None = None,
    score: float | None = None,
    vmin: float | None = None,
    vmax: float | None = None,
    title: str = "",
) -> Path:
    """Write one overlay figure. `vmin`/`vmax` fix the colour scale (e.g. shared across a category)."""
    h, w = anomaly_map.shape
    rgb = TF.resize(load_image(image_path), [h, w], antialias=True).clamp(0, 1).permute(1, 2, 0).numpy()
    vmin = float(anomaly_map.min()) if vmin is None else vmin
    vmax = float(anomaly_map.max()) if vmax is None else vmax
    panels = 4 if mask is not None else 3
    fig, axes = plt.subplots(1, panels, figsize=(3.2 * panels, 3.4), dpi=80)
    axes[0].imshow(rgb)
    axes[0].set_title("input")
    im = axes[1].imshow(anomaly_map, cmap="jet", vmin=vmin, vmax=vmax)
    axes[1].set_title("anomaly map" + (f" (score {score:.3g})" if score is not None else ""))
    fig.colorbar(im, ax=axes[1], fraction=0.046, pad=0.04)
    axes[2].imshow(rgb)
    axes[2].imshow(anomaly_map, cmap="jet", vmin=vmin, vmax=vmax, alpha=0.45)
    axes[2].set_title("overlay")
    if mask is not None:
        axes[3].imshow(mask, cmap="gray", vmin=0, vmax=1)
        axes[3].set_title("ground truth")
    for ax in axes:
        ax.axis("off")
    if title:
        fig.suptitle(title, fontsize=9)
    fig.tight_layout()
    out_path = Path(out_path)
    out_path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(out_path)
    plt.close(fig)
    return out_path
