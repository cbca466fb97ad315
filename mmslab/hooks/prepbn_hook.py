"""Iteration-keyed schedule of the PRepBN mixing weight ``lam`` (docs/method.md, "Norms")."""
from typing import Optional, Union

from mmengine.hooks import EMAHook, Hook
from mmengine.model import is_model_wrapper
from mmengine.registry import HOOKS

from mmslab.prepbn import set_prepbn_lam
from mmslab.prepbn.padding import ignore_padding
from mmslab.validation import check_float, check_int, is_int, is_number

DATA_BATCH = Optional[Union[dict, tuple, list]]


@HOOKS.register_module()
class PRepBNHook(Hook):
    """Set ``lam`` of every :class:`PRepBN` from the runner's iteration.

    ``lam`` mixes the two norms of PRepBN during training,
    ``lam * LayerNorm(x) + (1 - lam) * RepBN(x)``: it starts at ``r0`` (pure
    LayerNorm for ``r0 = 1``) and decays linearly to 0 (pure RepBN, which is also
    what a converged model evaluates and folds as). With ``i = runner.iter`` at the start of an
    iteration (0-based)::

        lam(i) = r0                                           if i < warmup_iters
        lam(i) = r0 * max(0, 1 - (i - warmup_iters) / decay)  otherwise

    ``lam`` is a pure function of ``runner.iter``: it is set in ``before_train``
    and ``before_train_iter``, never derived from counting forward calls. So
    gradient accumulation, several forwards per iteration, validation inside
    training and resuming from a checkpoint all see the same schedule as an
    uninterrupted run, and the hook has no state to save. Every PRepBN of the model
    holds the same ``lam``. The value is logged as ``prepbn_lam`` with the other
    training scalars (message hub key ``train/prepbn_lam``).

    The averaged model of mmengine's ``EMAHook`` (``ema_model.module``) gets the same
    ``lam`` at the same points: it is a buffer, which ``EMAHook(update_buffers=True)``
    (timm ``ModelEma``'s behaviour, the release's ``main_ema.py``) would otherwise average
    like the BatchNorm statistics, so the averaged model would lag the schedule and
    validate / save a different LayerNorm-RepBN mix than the one it is trained as.

    Choosing the schedule (measured: README, "From scratch"; Mask R-CNN trained from
    scratch on the synthetic set, box AP over 3-5 seeds): from scratch, train with
    ``norm_eval=False``, start the backbone with ``init_cfg=dict(type='SLABScratch',
    linear='mmdet_pvt', repbn_alpha=0.0)`` and either decay from ``r0=1.0`` over half the
    run, ``decay_iters=0.5`` (the default: 0.674), or use RepBN from the start, ``r0=0.0``
    (0.685). With the same init a decay over 4/5 of the run (``decay_iters=0.8``, the
    share users of the release found free of NaN losses) was worse (0.652). Do not let
    the decay end late: the network needs learning rate left to adapt to RepBN. The
    release decayed over 60k-300k iterations (per forward call).

    Fine-tuning a released (converged, pure RepBN) checkpoint keeps ``lam = 0``
    throughout with ``r0=0.0``::

        custom_hooks = [dict(type='PRepBNHook', r0=0.0)]

    Without the hook, ``lam`` stays at PRepBN's default 0 as well; the hook then
    only makes the choice explicit and logged.

    Args:
        r0 (float): Initial ``lam`` in ``[0, 1]``. Defaults to 1.0 (pure LayerNorm).
        warmup_iters (int): Iterations that keep ``lam = r0`` before the decay
            starts. Defaults to 0.
        decay_iters (int | float): Length of the linear decay to 0. An ``int`` is a
            number of iterations (``0``: switch to ``lam = 0`` right after the
            warmup); a ``float`` in ``(0, 1]`` is a fraction of ``runner.max_iters``
            (the whole run, also for epoch-based loops). Defaults to 0.5.
        ignore_padding (bool): Leave padded tokens out of the RepBN batch statistics
            in modules that take a ``key_padding_mask`` (DETR-family encoders;
            :mod:`mmslab.prepbn.padding`). No effect on other models. Defaults to True.
    """

    priority = 'NORMAL'

    def __init__(self,
                 r0: float = 1.0,
                 warmup_iters: int = 0,
                 decay_iters: Union[int, float] = 0.5,
                 ignore_padding: bool = True) -> None:
        name = type(self).__name__
        r0 = check_float(name, 'r0', r0, min=0, max=1)
        warmup_iters = check_int(name, 'warmup_iters', warmup_iters, min=0)
        if is_int(decay_iters):
            decay_iters = check_int(name, 'decay_iters', decay_iters, min=0)
        elif is_number(decay_iters):
            try:
                decay_iters = check_float(name, 'decay_iters', decay_iters, min=0, max=1,
                                          min_open=True)
            except ValueError as e:
                raise ValueError(f'{e} (a float is a fraction of max_iters; give an int for a '
                                 'number of iterations)') from None
        else:
            raise TypeError(f'{name}: decay_iters must be an int >= 0 (iterations) or a float '
                            f'in (0, 1] (fraction of max_iters), got {decay_iters!r} '
                            f'({type(decay_iters).__name__})')
        self.r0 = float(r0)
        self.warmup_iters = warmup_iters
        self.decay_iters = decay_iters
        if not isinstance(ignore_padding, bool):
            raise TypeError(f'{name}: ignore_padding must be True or False, got '
                            f'{ignore_padding!r}')
        self.ignore_padding = ignore_padding
        self._warned = False

    def decay_length(self, max_iters: int) -> float:
        """Number of decay iterations for a run of ``max_iters`` iterations."""
        if isinstance(self.decay_iters, float):
            return self.decay_iters * max_iters
        return float(self.decay_iters)

    def lam_at(self, cur_iter: int, max_iters: int) -> float:
        """``lam`` for the iteration ``cur_iter`` (0-based) of a ``max_iters`` run."""
        if cur_iter < self.warmup_iters:
            return self.r0
        decay = self.decay_length(max_iters)
        if decay <= 0:
            return 0.0
        return self.r0 * max(0.0, 1.0 - (cur_iter - self.warmup_iters) / decay)

    def before_train(self, runner) -> None:
        """Set ``lam`` for the first (or resumed) iteration; warn about odd setups."""
        lam = self._apply(runner)
        if lam is None:
            return
        if self.ignore_padding:
            model = runner.model.module if is_model_wrapper(runner.model) else runner.model
            n = ignore_padding(model)
            if n:
                runner.logger.info(f'PRepBNHook: padded tokens left out of the RepBN '
                                   f'statistics in {n} module(s) taking a key_padding_mask')
        end = self.warmup_iters + self.decay_length(runner.max_iters)
        if self.r0 > 0 and end > runner.max_iters:
            final = self.lam_at(runner.max_iters - 1, runner.max_iters)
            runner.logger.warning(
                f'PRepBNHook: the lam decay ends at iteration {end:g}, after the last '
                f'one ({runner.max_iters}); training ends with lam={final:.4g} > 0: the '
                'model is evaluated with that mix of LayerNorm and RepBN, and cannot be '
                'folded (tools/deploy.py) until lam reaches 0.')

    def before_train_iter(self,
                          runner,
                          batch_idx: int,
                          data_batch: DATA_BATCH = None) -> None:
        """Set ``lam`` for the current iteration and log it.

        Args:
            runner (Runner): The runner of the training process.
            batch_idx (int): The index of the current batch in the train loop.
            data_batch (dict or tuple or list, optional): Data from dataloader.
        """
        lam = self._apply(runner)
        if lam is not None:
            runner.message_hub.update_scalar('train/prepbn_lam', lam)

    def _apply(self, runner) -> Optional[float]:
        """Set ``lam(runner.iter)`` on all PRepBN, of the model and of its EMA copies;
        return it (None without PRepBN)."""
        model = runner.model.module if is_model_wrapper(runner.model) else runner.model
        lam = self.lam_at(runner.iter, runner.max_iters)
        for hook in runner.hooks:
            ema = getattr(hook, 'ema_model', None) if isinstance(hook, EMAHook) else None
            if ema is not None:
                set_prepbn_lam(ema.module, lam)
        if set_prepbn_lam(model, lam) == 0:
            if not self._warned:
                runner.logger.warning(
                    f'PRepBNHook: the model ({type(model).__name__}) has no PRepBN '
                    'module; the hook does nothing.')
                self._warned = True
            return None
        return lam

