"""RepBN and the progressive re-parameterized norm PRepBN (docs/method.md, "Norms").

Both act on channels-last tensors -- tokens ``(B, N, C)``, mmcv's ``(N, B, C)``, or
``(B, C)`` -- with BatchNorm statistics over every position. ``PRepBN.lam`` is set from
outside (``PRepBNHook``): the module never counts its forward calls.

Both are norm layers of mmengine's ``MODELS`` registry, so any OpenMMLab module that
builds its norms with mmcv's ``build_norm_layer`` takes ``norm_cfg=dict(type='PRepBN')``
(or ``'RepBN'``): the positional ``num_features``, ``eps`` (PRepBN: its LayerNorm's, so
``dict(type='LN', eps=1e-6)`` -> ``dict(type='PRepBN', eps=1e-6)`` is the same LayerNorm
at ``lam = 1``; RepBN: its BatchNorm's), ``requires_grad``; layer names ``ln<k>`` (PRepBN:
the LayerNorm's) / ``repbn<k>``.
"""
from typing import Any, Callable, Dict, Optional, Tuple, TypeVar

import torch
import torch.nn as nn
from mmengine.registry import MODELS

from ..validation import check_float, check_int


_HALF = (torch.float16, torch.bfloat16)


@MODELS.register_module(name='RepBN', force=True)
class RepBN(nn.Module):
    """``BN(x) + alpha * x`` with a BatchNorm1d over the last (channel) dim; statistics over
    every other position."""

    _abbr_ = 'repbn'  # mmcv's build_norm_layer names the layer repbn<postfix>

    def __init__(self, channels: int, eps: float = 1e-5, momentum: Optional[float] = 0.1) -> None:
        super().__init__()
        check_int('RepBN', 'channels', channels, min=1)
        check_float('RepBN', 'eps', eps, min=0, min_open=True)
        if momentum is not None:  # None: BatchNorm's cumulative average
            check_float('RepBN', 'momentum (or None)', momentum, min=0, max=1)
        self.alpha = nn.Parameter(torch.ones(1))
        self.bn = nn.BatchNorm1d(channels, eps=eps, momentum=momentum)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if x.dim() < 2 or x.shape[-1] != self.bn.num_features:
            raise ValueError(f'RepBN({self.bn.num_features}) got a tensor of shape '
                             f'{tuple(x.shape)}: expected channels last, (..., '
                             f'{self.bn.num_features})')
        # Half / bfloat16 inputs (autocast, or a .half() model in eval): float32 math, as
        # CUDA autocast runs layer_norm (it runs batch_norm in the input's dtype). The
        # output carries the *unnormalised* input (alpha * x), and the eval form
        # scale * x + shift multiplies x by gamma / std + alpha: in half precision that
        # product and shift leave the fp16 range (or keep 8 bits in bf16) for channels of
        # large mean and small spread although the result is representable.
        if x.dtype in _HALF and (self.alpha.dtype == torch.float32 or not self.bn.training):
            out_dtype = torch.float32 if torch.is_autocast_enabled(x.device.type) else x.dtype
            with torch.autocast(x.device.type, enabled=False):
                if self.bn.training:
                    return self._forward(x.float()).to(out_dtype)
                scale, shift = self.affine()
                return torch.addcmul(shift.float(), x.float(), scale.float()).to(out_dtype)
        return self._forward(x)

    def _forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.bn.training:
            # (B*N, C) rows: the same statistics as BatchNorm1d on (B, C, N), no transposes.
            y = self.bn(x.reshape(-1, x.shape[-1])).view_as(x)
            return y + self.alpha * x
        scale, shift = self.affine()
        return torch.addcmul(shift.to(x.dtype), x, scale.to(x.dtype))

    def affine(self) -> Tuple[torch.Tensor, torch.Tensor]:
        """The eval-mode map as ``y = scale * x + shift`` (per channel), in the parameters'
        dtype, at least float32 (``shift`` of a half model may be beyond the fp16 range)."""
        bn = self.bn
        acc = torch.promote_types(bn.running_var.dtype, torch.float32)
        inv_std = torch.rsqrt(bn.running_var.to(acc) + bn.eps)
        gamma = bn.weight.to(acc) if bn.affine else torch.ones_like(inv_std)
        beta = bn.bias.to(acc) if bn.affine else torch.zeros_like(inv_std)
        scale = gamma * inv_std + self.alpha.to(acc)
        shift = beta - gamma * bn.running_mean.to(acc) * inv_std
        return scale, shift


@MODELS.register_module(name='PRepBN', force=True)
class PRepBN(nn.Module):
    """Progressive re-parameterized BatchNorm ("LinearNorm" in the SLAB release).

    ``lam * LayerNorm(x) + (1 - lam) * RepBN(x)``, in training *and* in eval mode (eval
    uses RepBN's running statistics), so a model is evaluated as the network it was trained
    as at any point of the schedule. ``lam = 1`` is pure LayerNorm; ``lam = 0`` (the
    default, a converged model, what the release evaluates and what folds) is exactly
    RepBN. Training runs both branches at any ``lam``, as the release: RepBN's running
    statistics are tracked while ``lam = 1`` and every parameter takes part in the graph
    (DistributedDataParallel requires it: skipping the LayerNorm at ``lam = 0`` would leave
    its parameters without gradients).

    ``lam`` is a persistent float64 buffer, the only place the value lives: whatever sets
    it (``norm.lam = 0.3``, ``norm.lam = tensor``, :func:`set_prepbn_lam`, the
    :class:`~mmslab.hooks.PRepBNHook`, ``load_state_dict``, ``torch.func.functional_call``)
    is what ``forward`` and :meth:`affine` read. It travels with the weights (key
    ``<prefix>lam``); a state dict without it (the release files, older mmslab checkpoints)
    loads as ``lam = 0``. It stays an exact float64 under ``.half()`` / ``.to(dtype)`` /
    ``.double()`` (device moves apply).

    In eval mode a branch of weight 0 is skipped where reading ``lam`` is free and safe: a
    CPU buffer that does not require grad, outside tracing, scripting and compiling.
    Everywhere else (a CUDA buffer: no device synchronisation per norm; torch.compile, ONNX
    tracing, functorch transforms) both branches run, branch-free; that is exact at
    ``lam`` in {0, 1} (``0 * y`` and ``1 * y`` are exact, LayerNorm's output is finite).

    Sub-module names ``norm1`` (LayerNorm) and ``norm2`` (RepBN) follow the release.
    ``eps`` is the name mmcv's ``build_norm_layer`` passes: the LayerNorm's eps, as for
    ``dict(type='LN')`` (give ``eps`` or ``ln_eps``, not both).
    """

    lam: torch.Tensor
    # mmcv's build_norm_layer names the layer ln<postfix>: it stands where a LayerNorm
    # stood (modules such as mmseg's ViT name attributes by it), so a LayerNorm
    # checkpoint's ``ln1.weight`` is this module's ``ln1.norm1.weight``
    _abbr_ = 'ln'

    def __init__(self,
                 channels: int,
                 ln_eps: Optional[float] = None,
                 bn_eps: float = 1e-5,
                 momentum: Optional[float] = 0.1,
                 eps: Optional[float] = None) -> None:
        super().__init__()
        check_int('PRepBN', 'channels', channels, min=1)
        if eps is not None:
            if ln_eps is not None:
                raise ValueError(f'PRepBN: eps and ln_eps both name the LayerNorm eps; give '
                                 f'one (got eps={eps!r}, ln_eps={ln_eps!r})')
            ln_eps = eps
        elif ln_eps is None:
            ln_eps = 1e-6
        check_float('PRepBN', 'ln_eps', ln_eps, min=0, min_open=True)
        check_float('PRepBN', 'bn_eps', bn_eps, min=0, min_open=True)
        if momentum is not None:  # None: BatchNorm's cumulative average
            check_float('PRepBN', 'momentum (or None)', momentum, min=0, max=1)
        self.channels = channels
        self.norm1 = nn.LayerNorm(channels, eps=ln_eps)
        self.norm2 = RepBN(channels, eps=bn_eps, momentum=momentum)
        self.register_buffer('lam', torch.zeros((), dtype=torch.float64))  # exact: a double

    def __setattr__(self, name: str, value: Any) -> None:
        if name == 'lam' and 'lam' in self.__dict__.get('_buffers', {}):
            self._set_lam(value)
            return
        super().__setattr__(name, value)

    def _set_lam(self, value: Any) -> None:
        """``norm.lam = value``: a number in [0, 1] or a one-element tensor (kept as a
        float64 buffer on the module's device)."""
        buf = self._buffers['lam']
        if isinstance(value, torch.Tensor):
            if value.numel() != 1:
                raise ValueError(f'PRepBN: lam must be one number in [0, 1] (a float or a '
                                 f'one-element tensor), got a tensor of shape '
                                 f'{tuple(value.shape)}')
            lam = value.reshape(()).to(device=buf.device, dtype=torch.float64, copy=True)
            known = _read_free(lam)
            if known is not None and not 0.0 <= known <= 1.0:
                raise ValueError(f'PRepBN: lam must be in [0, 1], got {known!r}')
            self._buffers['lam'] = lam
            return
        lam = check_float('PRepBN', 'lam', value, min=0, max=1)
        with torch.no_grad():
            buf.fill_(lam)

    def _apply(self, fn: Callable[[torch.Tensor], torch.Tensor],
               recurse: bool = True) -> 'PRepBN':
        # .half() / .to(dtype) convert every floating buffer; lam keeps its exact float64
        # value (and follows a device move)
        lam = self._buffers['lam']
        super()._apply(fn, recurse)
        new = self._buffers['lam']
        if new is not None and new.dtype != torch.float64:
            self._buffers['lam'] = lam.to(device=new.device)
        return self

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if x.dim() < 2 or x.shape[-1] != self.channels:
            raise ValueError(f'PRepBN({self.channels}) got a tensor of shape {tuple(x.shape)}: '
                             f'expected channels last, (..., {self.channels})')
        if x.dtype in _HALF and self.norm1.weight.dtype == torch.float32:
            # autocast / half activations of a float32 model: both branches in float32 (the
            # LayerNorm as CUDA autocast runs it, RepBN as RepBN.forward explains), float32
            # out under autocast like layer_norm
            out_dtype = torch.float32 if torch.is_autocast_enabled(x.device.type) else x.dtype
            with torch.autocast(x.device.type, enabled=False):
                return self._mix(x.float()).to(out_dtype)
        return self._mix(x)

    def _mix(self, x: torch.Tensor) -> torch.Tensor:
        if not self.training:
            known = _read_free(self.lam)
            if known == 0.0:
                return self.norm2(x)
            if known == 1.0:
                return self.norm1(x)
        lam = self.lam
        return lam * self.norm1(x) + (1.0 - lam) * self.norm2(x)

    def _load_from_state_dict(self, state_dict: Dict[str, Any], prefix: str, *args: Any,
                              **kwargs: Any) -> None:
        # files without lam (release checkpoints, older mmslab ones) hold converged models
        state_dict.setdefault(prefix + 'lam', torch.zeros((), dtype=torch.float64))
        super()._load_from_state_dict(state_dict, prefix, *args, **kwargs)
        lam = self._buffers['lam']
        if lam.dtype != torch.float64:  # load_state_dict(..., assign=True) of a cast file
            self._buffers['lam'] = lam.to(torch.float64)

    def check_foldable(self) -> None:
        """Raise unless this PRepBN is an affine map (``lam = 0``): LayerNorm does not fold."""
        lam = float(self.lam)
        if lam != 0.0:
            raise ValueError(
                f'cannot fold a PRepBN with lam={lam:g}: only a converged PRepBN '
                '(lam = 0, pure RepBN) is an affine map; this model still mixes in '
                'LayerNorm. Train until the PRepBNHook schedule reaches lam = 0, or '
                'fine-tune with lam = 0 (PRepBNHook r0=0.0) before folding.')

    def affine(self) -> Tuple[torch.Tensor, torch.Tensor]:
        """The map of a converged (``lam = 0``) eval-mode PRepBN: ``y = scale * x + shift``.
        Raises for ``lam != 0`` (see :meth:`check_foldable`)."""
        self.check_foldable()
        return self.norm2.affine()

    def extra_repr(self) -> str:
        try:
            return f'lam={float(self.lam):g}'
        except (RuntimeError, ValueError):  # a meta / fake tensor has no value
            return 'lam=?'


def _read_free(lam: torch.Tensor) -> Optional[float]:
    """``lam`` as a float where reading it costs nothing and changes nothing: a CPU tensor
    that does not require grad, read eagerly (not while compiling, tracing or scripting,
    and not a functorch-wrapped or fake tensor, whose value cannot be read). Else None."""
    if (torch.compiler.is_compiling() or torch.jit.is_tracing() or torch.jit.is_scripting()
            or lam.device.type != 'cpu' or lam.requires_grad):
        return None
    try:
        return float(lam)
    except Exception:  # noqa: BLE001 -- vmap / fake / fx proxies raise various types
        return None


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


def set_prepbn_lam(model: nn.Module, lam: float) -> int:
    """Set ``lam`` of every PRepBN in ``model``; return how many there are."""
    n = 0
    for m in model.modules():
        if isinstance(m, PRepBN):
            m.lam = lam
            n += 1
    return n

