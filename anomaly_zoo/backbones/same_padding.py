"""TensorFlow 'same' padding frozen for one input size, as lukemelas' EfficientNet-PyTorch does it.

TF-ported EfficientNets need asymmetric 'same' padding on their stride-2 convolutions. timm pads for the size
it is actually given (`Conv2dSame`); lukemelas' `Conv2dStaticSamePadding` (the backbone of the official OneNIP and
UniAD code) computes the padding once, for the model's nominal resolution (380 px for b4), and applies it at every
input size. The two differ wherever an intermediate size has another parity than at the nominal size: at 224 px
the first is `blocks.2.0.conv_dw` (k5 s2 on 56x56: 'same' pads (1, 2), the 380-px padding is (2, 2)), which moves the
stride-8/16 features by ~1.3 relative. `freeze_same_padding` turns a timm model into the static variant.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from timm.layers import Conv2dSame
from torch import nn


class StaticSamePadConv2d(nn.Conv2d):
    """A Conv2d that zero-pads its input by a fixed (left, right, top, bottom) before convolving.

    Same parameters (and state-dict keys) as the `Conv2dSame` it replaces, so weights load unchanged.
    """

    def __init__(self, conv: nn.Conv2d, pad: tuple[int, int, int, int]) -> None:
        # torch types a Conv2d's kernel_size, stride and dilation as tuple[int, ...]; they are pairs (what it takes).
        super().__init__(
            conv.in_channels, conv.out_channels, conv.kernel_size, conv.stride, 0, conv.dilation, conv.groups,  # type: ignore[arg-type]
            conv.bias is not None, device=conv.weight.device, dtype=conv.weight.dtype,
        )  # fmt: skip
        self.static_pad = tuple(int(p) for p in pad)
        with torch.no_grad():
            self.weight.copy_(conv.weight)
            if conv.bias is not None:
                assert self.bias is not None  # built with bias=True just above
                self.bias.copy_(conv.bias)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return super().forward(F.pad(x, self.static_pad))

    def extra_repr(self) -> str:
        return f"{super().extra_repr()}, static_pad={self.static_pad}"


def tf_same_padding(size: int, kernel: int, stride: int, dilation: int = 1) -> tuple[int, int]:
    """TF 'same' padding (before, after) of one axis of length `size`: the extra pixel goes after."""
    total = max((math.ceil(size / stride) - 1) * stride + (kernel - 1) * dilation + 1 - size, 0)
    return total // 2, total - total // 2


@torch.no_grad()
def freeze_same_padding(model: nn.Module, image_size: int) -> dict[str, tuple[int, int, int, int]]:
    """Replace every `Conv2dSame` of `model` by a `StaticSamePadConv2d` padded as for an `image_size` input.

    The input size each convolution sees at `image_size` is recorded by one forward pass (exact for any
    architecture, ~0.3 s for b4 at 380 px on a CPU). Returns {module name: (left, right, top, bottom)}.
    """
    targets = {name: m for name, m in model.named_modules() if isinstance(m, Conv2dSame)}
    sizes: dict[str, tuple[int, int]] = {}

    def record(name: str):
        def hook(_module: nn.Module, args: tuple) -> None:
            sizes.setdefault(name, tuple(args[0].shape[-2:]))

        return hook

    hooks = [m.register_forward_pre_hook(record(name)) for name, m in targets.items()]
    was_training = model.training
    try:
        model.eval()(torch.zeros(1, 3, image_size, image_size, device=next(model.parameters()).device))
    finally:
        for handle in hooks:
            handle.remove()
        model.train(was_training)
    pads = {}
    for name, conv in targets.items():
        if name not in sizes:  # not on the forward path (e.g. a head features_only skips): nothing to pad
            continue
        (h, w), (kh, kw), (sh, sw), (dh, dw) = sizes[name], conv.kernel_size, conv.stride, conv.dilation
        pad = (*tf_same_padding(w, kw, sw, dw), *tf_same_padding(h, kh, sh, dh))
        parent_name, _, child = name.rpartition(".")
        setattr(model.get_submodule(parent_name) if parent_name else model, child, StaticSamePadConv2d(conv, pad))
        pads[name] = pad
    return pads
