"""Object masks that remove background false positives on object classes (`method.mask=...`)."""

from __future__ import annotations

import torch
import torch.nn.functional as F

MASKS = ("none", "dino_foreground", "cutler")

# MVTec classes whose map is never masked. "official": the DIVAD code's list (zipper skipped, grid masked);
# "textures": MVTec's five texture classes.
MASK_SKIP_LISTS = {
    "official": ("carpet", "leather", "wood", "tile", "zipper"),
    "textures": ("carpet", "grid", "leather", "tile", "wood"),
    "none": (),
}


def foreground_from_features(features: torch.Tensor, size: int) -> torch.Tensor:
    """Training-free foreground estimate from patch features: the first principal component, oriented so that
    the image border is background, thresholded at 0; (N, size, size) in {0, 1}.

    Dependency-free alternative to CutLER (which needs detectron2 and its weights).
    """
    n, _, h, w = features.shape
    x = features.flatten(2).transpose(1, 2).float()  # (N, hw, C)
    x = x - x.mean(dim=1, keepdim=True)
    _, _, v = torch.linalg.svd(x, full_matrices=False)
    pc1 = (x @ v[:, 0, :, None])[..., 0].view(n, h, w)
    border = torch.ones(h, w, dtype=torch.bool, device=features.device)
    border[1:-1, 1:-1] = False
    sign = torch.where(pc1[:, border].mean(dim=1) > 0, -1.0, 1.0)
    fg = (pc1 * sign[:, None, None] > 0).float()
    return (F.interpolate(fg[:, None], size=(size, size), mode="nearest")[:, 0] > 0.5).float()


def cutler_masks(*_args, **_kwargs) -> torch.Tensor:
    try:
        import detectron2  # noqa: F401
    except ImportError as err:
        raise ImportError(
            "method.mask=cutler needs detectron2 and the CutLER cascade R50-FPN weights (cutler_cascade_final.pth; "
            "https://github.com/facebookresearch/CutLER). Install them, or use method.mask=dino_foreground or none."
        ) from err
    raise NotImplementedError(  # pragma: no cover - needs detectron2
        "CutLER masks: detectron2 is importable but the CutLER predictor is not wired in yet; use "
        "method.mask=dino_foreground"
    )
