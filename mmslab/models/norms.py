"""RepBN and the progressive re-parameterized norm PRepBN (SLAB.md section 1).

Both act on token tensors ``(B, N, C)``; BatchNorm statistics are taken over batch *and*
tokens. ``PRepBN.lam`` is a plain attribute set from outside (``PRepBNHook``): the module
never counts its forward calls.
"""
from typing import Tuple

import torch
import torch.nn as nn


class RepBN(nn.Module):
    """``BN(x) + alpha * x`` with a BatchNorm1d over the channel dim of ``(B, N, C)``."""

    def __init__(self, channels: int, eps: float = 1e-5, momentum: float = 0.1) -> None:
        super().__init__()
        self.alpha = nn.Parameter(torch.ones(1))
        self.bn = nn.BatchNorm1d(channels, eps=eps, momentum=momentum)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.bn.training:
            # (B*N, C) rows: the same statistics as BatchNorm1d on (B, C, N), no transposes.
            y = self.bn(x.reshape(-1, x.shape[-1])).view_as(x)
            return y + self.alpha * x
        scale, shift = self.affine()
        return torch.addcmul(shift.to(x.dtype), x, scale.to(x.dtype))

    def affine(self) -> Tuple[torch.Tensor, torch.Tensor]:
        """The eval-mode map as ``y = scale * x + shift`` (per channel)."""
        bn = self.bn
        inv_std = torch.rsqrt(bn.running_var + bn.eps)
        gamma = bn.weight if bn.affine else torch.ones_like(inv_std)
        beta = bn.bias if bn.affine else torch.zeros_like(inv_std)
        scale = gamma * inv_std + self.alpha
        shift = beta - gamma * bn.running_mean * inv_std
        return scale, shift


class PRepBN(nn.Module):
    """Progressive re-parameterized BatchNorm ("LinearNorm" in the SLAB release).

    Training: ``lam * LayerNorm(x) + (1 - lam) * RepBN(x)``; eval: ``RepBN(x)``.
    ``lam = 1`` is pure LayerNorm, ``lam = 0`` (the default, a converged model) pure RepBN.
    Both branches run in every training forward, as in the release: RepBN's running
    statistics are tracked even while ``lam = 1``, and every parameter takes part in the
    graph at any ``lam`` (DistributedDataParallel requires it: skipping the LayerNorm at
    ``lam = 0`` would leave its parameters without gradients and stop DDP training).

    Sub-module names ``norm1`` (LayerNorm) and ``norm2`` (RepBN) follow the release.
    """

    def __init__(self,
                 channels: int,
                 ln_eps: float = 1e-6,
                 bn_eps: float = 1e-5,
                 momentum: float = 0.1) -> None:
        super().__init__()
        self.channels = channels
        self.norm1 = nn.LayerNorm(channels, eps=ln_eps)
        self.norm2 = RepBN(channels, eps=bn_eps, momentum=momentum)
        self.lam = 0.0

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if x.shape[-1] != self.channels:
            raise ValueError(f'PRepBN({self.channels}) got a tensor of shape {tuple(x.shape)}: '
                             f'expected (..., {self.channels}) tokens')
        if not self.training:
            return self.norm2(x)
        lam = float(self.lam)
        return lam * self.norm1(x) + (1.0 - lam) * self.norm2(x)

    def affine(self) -> Tuple[torch.Tensor, torch.Tensor]:
        """The eval-mode (deploy) map ``y = scale * x + shift``."""
        return self.norm2.affine()

    def extra_repr(self) -> str:
        return f'lam={float(self.lam):g}'


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
    new.weight.requires_grad_(w.requires_grad)
    new.bias.requires_grad_(w.requires_grad)
    return new


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
    return new


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
    return new


def set_prepbn_lam(model: nn.Module, lam: float) -> int:
    """Set ``lam`` of every PRepBN in ``model``; return how many there are."""
    n = 0
    for m in model.modules():
        if isinstance(m, PRepBN):
            m.lam = float(lam)
            n += 1
    return n

