"""Per-channel affine maps: what a converged RepBN / PRepBN is in eval mode, applied on
their own (the deploy form of a norm that no adjacent layer absorbs) or folded exactly
into the adjacent Linear / Conv2d (what the SLAB backbones do)."""
from typing import TypeVar

import torch
import torch.nn as nn

_HALF = (torch.float16, torch.bfloat16)


def apply_channel_affine(x: torch.Tensor, scale: torch.Tensor,
                         shift: torch.Tensor) -> torch.Tensor:
    """``scale * x + shift`` over the last (channel) dim, as one fused ``addcmul``.

    Half / bfloat16 activations are computed in float32 and returned in their dtype (float32
    under autocast, like layer_norm): ``scale`` and ``shift`` of a converged RepBN may leave
    the fp16 range although the result is representable (see :class:`RepBN`)."""
    if x.dtype in _HALF:
        out_dtype = torch.float32 if torch.is_autocast_enabled(x.device.type) else x.dtype
        with torch.autocast(x.device.type, enabled=False):
            return torch.addcmul(shift.float(), x.float(), scale.float()).to(out_dtype)
    return torch.addcmul(shift.to(x.dtype), x, scale.to(x.dtype))


FoldedT = TypeVar('FoldedT', nn.Linear, nn.Conv2d)


def _keep_requires_grad(new: FoldedT, weight: torch.Tensor) -> FoldedT:
    """The folded layer's weight and bias require grad as the original weight did (a
    frozen layer stays frozen)."""
    new.weight.requires_grad_(weight.requires_grad)
    new.bias.requires_grad_(weight.requires_grad)
    return new


@torch.no_grad()
def fold_affine_into_linear(linear: nn.Linear, scale: torch.Tensor,
                            shift: torch.Tensor) -> nn.Linear:
    """Return a Linear equal to ``linear(scale * x + shift)`` (exact, same dtype)."""
    w = linear.weight
    acc = torch.float64
    new = nn.Linear(linear.in_features, linear.out_features, bias=True,
                    device=w.device, dtype=w.dtype)
    bias = w.to(acc) @ shift.to(acc)
    if linear.bias is not None:
        bias = bias + linear.bias.to(acc)
    new.weight.copy_((w.to(acc) * scale.to(acc)).to(w.dtype))
    new.bias.copy_(bias.to(w.dtype))
    return _keep_requires_grad(new, w)


@torch.no_grad()
def fold_affine_into_conv(conv: nn.Conv2d, scale: torch.Tensor,
                          shift: torch.Tensor) -> nn.Conv2d:
    """Return a Conv2d equal to ``scale * conv(x) + shift`` per output channel (exact)."""
    w = conv.weight
    acc = torch.float64
    new = nn.Conv2d(conv.in_channels, conv.out_channels, conv.kernel_size, conv.stride,
                    conv.padding, conv.dilation, conv.groups, bias=True,
                    padding_mode=conv.padding_mode, device=w.device, dtype=w.dtype)
    bias = conv.bias.to(acc) if conv.bias is not None else torch.zeros_like(shift, dtype=acc)
    new.weight.copy_((w.to(acc) * scale.to(acc).view(-1, 1, 1, 1)).to(w.dtype))
    new.bias.copy_((bias * scale.to(acc) + shift.to(acc)).to(w.dtype))
    return _keep_requires_grad(new, w)


@torch.no_grad()
def fold_affine_into_conv_input(conv: nn.Conv2d, scale: torch.Tensor,
                                shift: torch.Tensor) -> nn.Conv2d:
    """Return a Conv2d equal to ``conv(scale * x + shift)`` for a conv without padding."""
    if any(p != 0 for p in conv.padding) or conv.groups != 1:
        raise ValueError('an input affine folds exactly only into an unpadded dense conv')
    w = conv.weight
    acc = torch.float64
    new = nn.Conv2d(conv.in_channels, conv.out_channels, conv.kernel_size, conv.stride,
                    conv.padding, conv.dilation, conv.groups, bias=True,
                    device=w.device, dtype=w.dtype)
    bias = conv.bias.to(acc) if conv.bias is not None else torch.zeros(
        conv.out_channels, dtype=acc, device=w.device)
    new.weight.copy_((w.to(acc) * scale.to(acc).view(1, -1, 1, 1)).to(w.dtype))
    new.bias.copy_((bias + (w.to(acc) * shift.to(acc).view(1, -1, 1, 1)).sum((1, 2, 3)))
                   .to(w.dtype))
    return _keep_requires_grad(new, w)
