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

Both have the deploy form of mmpretrain's re-parameterizable blocks: ``deploy=True`` builds,
and :meth:`switch_to_deploy` turns a converged norm into, the per-channel affine map
(parameters ``scale`` and ``shift``) that it is in eval mode -- exact, no statistics, no
schedule.

A PRepBN also loads a LayerNorm's entries (``<prefix>weight`` / ``<prefix>bias``): they go
to its LayerNorm branch and ``lam`` becomes 1, so the model computes what the LayerNorm
model computed (:mod:`mmslab.prepbn.keymap`).
"""
from typing import Any, Callable, Dict, Optional, Tuple

import torch
import torch.nn as nn
from mmengine.registry import MODELS

from ..validation import check_float, check_int
from .affine import apply_channel_affine
from .keymap import load_layernorm_entries

_HALF = (torch.float16, torch.bfloat16)


def _check_channels_last(owner: str, channels: int, x: torch.Tensor) -> None:
    if torch.jit.is_tracing():  # shapes are traced values there: the graph checks nothing
        return
    if x.dim() < 2 or x.shape[-1] != channels:
        raise ValueError(f'{owner}({channels}) got a tensor of shape {tuple(x.shape)}: '
                         f'expected channels last, (..., {channels}) -- tokens (B, N, C), '
                         '(N, B, C) or (B, C)')


def _affine_parameters(module: nn.Module, scale: torch.Tensor, shift: torch.Tensor,
                       requires_grad: bool) -> None:
    """Give ``module`` the deploy form's parameters ``scale`` / ``shift``."""
    module.scale = nn.Parameter(scale.detach().clone(), requires_grad=requires_grad)
    module.shift = nn.Parameter(shift.detach().clone(), requires_grad=requires_grad)


@MODELS.register_module(name='RepBN', force=True)
class RepBN(nn.Module):
    """``BN(x) + alpha * x`` with a BatchNorm1d over the last (channel) dim; statistics over
    every other position."""

    _abbr_ = 'repbn'  # mmcv's build_norm_layer names the layer repbn<postfix>

    def __init__(self, channels: int, eps: float = 1e-5, momentum: Optional[float] = 0.1,
                 deploy: bool = False) -> None:
        super().__init__()
        check_int('RepBN', 'channels', channels, min=1)
        check_float('RepBN', 'eps', eps, min=0, min_open=True)
        if momentum is not None:  # None: BatchNorm's cumulative average
            check_float('RepBN', 'momentum (or None)', momentum, min=0, max=1)
        self.channels = channels
        self.deploy = bool(deploy)
        # padded positions to leave out of the batch statistics (mmslab.prepbn.padding)
        self.token_mask: Optional[torch.Tensor] = None
        if self.deploy:
            _affine_parameters(self, torch.ones(channels), torch.zeros(channels), True)
            return
        self.alpha = nn.Parameter(torch.ones(1))
        self.bn = nn.BatchNorm1d(channels, eps=eps, momentum=momentum)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        _check_channels_last('RepBN', self.channels, x)
        if self.deploy:
            return apply_channel_affine(x, self.scale, self.shift)
        if not self.bn.training:
            # the eval map scale * x + shift; half inputs in float32 (apply_channel_affine)
            return apply_channel_affine(x, *self.affine())
        # Half / bfloat16 inputs (autocast, or half activations of a float32 model): float32
        # math, as CUDA autocast runs layer_norm (it runs batch_norm in the input's dtype).
        # The output carries the *unnormalised* input (alpha * x), and the eval form
        # scale * x + shift multiplies x by gamma / std + alpha: in half precision that
        # product and shift leave the fp16 range (or keep 8 bits in bf16) for channels of
        # large mean and small spread although the result is representable.
        if x.dtype in _HALF and self.alpha.dtype == torch.float32:
            out_dtype = torch.float32 if torch.is_autocast_enabled(x.device.type) else x.dtype
            with torch.autocast(x.device.type, enabled=False):
                return self._train_forward(x.float()).to(out_dtype)
        return self._train_forward(x)

    def _train_forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.token_mask is not None:
            return self._masked_train_forward(x, self.token_mask) + self.alpha * x
        # (B*N, C) rows: the same statistics as BatchNorm1d on (B, C, N), no transposes.
        y = self.bn(x.reshape(-1, x.shape[-1])).view_as(x)
        return y + self.alpha * x

    def _masked_train_forward(self, x: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
        """BatchNorm in training over the tokens where ``mask`` (``x.shape[:-1]``, True at
        padded positions, as a ``key_padding_mask``) is False: batch statistics and the
        running-statistics update (BatchNorm1d's momentum / cumulative rule, unbiased
        running variance) over the valid tokens; every token normalised with them."""
        bn = self.bn
        if tuple(mask.shape) != tuple(x.shape[:-1]):
            raise ValueError(f'RepBN: padding mask of shape {tuple(mask.shape)} for tokens of '
                             f'shape {tuple(x.shape)}: expected {tuple(x.shape[:-1])}')
        if type(bn) is not nn.BatchNorm1d:
            raise ValueError(f'RepBN: ignoring padded tokens needs a local BatchNorm1d, not '
                             f'{type(bn).__name__} (PRepBNHook(ignore_padding=False))')
        rows = x.reshape(-1, x.shape[-1])
        valid = rows[~mask.reshape(-1).to(torch.bool)]
        n = valid.shape[0]
        if n < 2:
            raise ValueError(f'RepBN: {n} unpadded token(s) in the batch: BatchNorm needs 2')
        mean = valid.mean(0)
        var = valid.var(0, unbiased=False)
        if bn.track_running_stats:
            with torch.no_grad():
                bn.num_batches_tracked.add_(1)
                momentum = (1.0 / float(bn.num_batches_tracked) if bn.momentum is None
                            else bn.momentum)
                bn.running_mean.lerp_(mean.detach().to(bn.running_mean.dtype), momentum)
                bn.running_var.lerp_((var.detach() * (n / (n - 1))).to(bn.running_var.dtype),
                                     momentum)
        y = (rows - mean) * torch.rsqrt(var + bn.eps)
        if bn.affine:
            y = y * bn.weight + bn.bias
        return y.view_as(x)

    @torch.no_grad()
    def switch_to_deploy(self) -> None:
        """Become the eval-mode map ``scale * x + shift`` (exact; from the running
        statistics, whatever the mode)."""
        if self.deploy:
            return
        scale, shift = self.affine()
        requires_grad = self.alpha.requires_grad
        del self.alpha, self.bn
        _affine_parameters(self, scale, shift, requires_grad)
        self.deploy = True

    def affine(self) -> Tuple[torch.Tensor, torch.Tensor]:
        """The eval-mode map as ``y = scale * x + shift`` (per channel), in the parameters'
        dtype, at least float32 (``shift`` of a half model may be beyond the fp16 range)."""
        if self.deploy:
            return self.scale, self.shift
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

    ``deploy=True`` / :meth:`switch_to_deploy`: the converged norm's affine map alone
    (parameters ``scale``, ``shift``; no branches, no ``lam``).
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
                 eps: Optional[float] = None,
                 deploy: bool = False) -> None:
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
        self.deploy = bool(deploy)
        if self.deploy:
            _affine_parameters(self, torch.ones(channels), torch.zeros(channels), True)
            return
        self.norm1 = nn.LayerNorm(channels, eps=ln_eps)
        self.norm2 = RepBN(channels, eps=bn_eps, momentum=momentum)
        self.register_buffer('lam', torch.zeros((), dtype=torch.float64))  # exact: a double

    def __setattr__(self, name: str, value: Any) -> None:
        if name == 'lam' and 'lam' in self.__dict__.get('_buffers', {}):
            self._set_lam(value)
            return
        if name == 'lam' and self.__dict__.get('deploy'):
            raise ValueError('PRepBN in its deploy form (an affine map) has no lam to set: '
                             'the schedule ended when it was folded')
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
        if self.deploy:
            return super()._apply(fn, recurse)
        lam = self._buffers['lam']
        super()._apply(fn, recurse)
        new = self._buffers['lam']
        if new is not None and new.dtype != torch.float64:
            self._buffers['lam'] = lam.to(device=new.device)
        return self

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        _check_channels_last('PRepBN', self.channels, x)
        if self.deploy:
            return apply_channel_affine(x, self.scale, self.shift)
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
        if self.deploy:
            return super()._load_from_state_dict(state_dict, prefix, *args, **kwargs)
        # a LayerNorm's weight / bias: the LayerNorm branch, lam = 1 (raises on entries
        # that are not a LayerNorm's of these channels)
        load_layernorm_entries(self, state_dict, prefix)
        # files without lam (release checkpoints, older mmslab ones) hold converged models
        state_dict.setdefault(prefix + 'lam', torch.zeros((), dtype=torch.float64))
        super()._load_from_state_dict(state_dict, prefix, *args, **kwargs)
        lam = self._buffers['lam']
        if lam.dtype != torch.float64:  # load_state_dict(..., assign=True) of a cast file
            self._buffers['lam'] = lam.to(torch.float64)

    def check_foldable(self) -> None:
        """Raise unless this PRepBN is an affine map (``lam = 0``): LayerNorm does not fold."""
        if self.deploy:
            return
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
        if self.deploy:
            return self.scale, self.shift
        self.check_foldable()
        return self.norm2.affine()

    @torch.no_grad()
    def switch_to_deploy(self) -> None:
        """Become the converged norm's affine map ``scale * x + shift`` (exact, from the
        RepBN branch's running statistics). Raises, changing nothing, unless ``lam = 0``."""
        if self.deploy:
            return
        scale, shift = self.affine()
        requires_grad = self.norm2.alpha.requires_grad
        del self.norm1, self.norm2
        del self._buffers['lam']
        _affine_parameters(self, scale, shift, requires_grad)
        self.deploy = True

    def extra_repr(self) -> str:
        if self.deploy:
            return f'{self.channels}, deploy=True'
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
