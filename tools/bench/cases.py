"""What one interleaved group of calls measures (a *case*: input size, batch, autocast
dtype, eval forward or training step), the presets, and the call a case times."""
import re
from contextlib import nullcontext
from dataclasses import dataclass
from typing import Any, Callable, Dict, List, Optional, Sequence, Tuple

import torch
import torch.nn as nn

Size = Tuple[int, int]

DEFAULT_SIZES: Tuple[Size, ...] = ((512, 512), (800, 1344), (1600, 2688))
AMP_DTYPES: Dict[str, Optional[torch.dtype]] = {
    'fp32': None, 'fp16': torch.float16, 'bf16': torch.bfloat16}


@dataclass(frozen=True)
class Case:
    """What one interleaved group of calls measures."""
    size: Size
    batch: int = 1
    amp: str = 'fp32'     # 'fp32' (no autocast) | 'fp16' | 'bf16' (torch.autocast dtype)
    train: bool = False   # training step (fwd + bwd) instead of a no_grad eval forward

    @property
    def mode(self) -> str:
        return f'{"train" if self.train else "eval"} {self.amp}'

    def __str__(self) -> str:
        return f'{self.mode} b{self.batch} {self.size[0]}x{self.size[1]}'

    @classmethod
    def parse(cls, text: str) -> 'Case':
        """The inverse of ``str(case)``: ``'eval fp16 b2 800x1344'``."""
        m = re.fullmatch(r'\s*(eval|train)\s+(\w+)\s+b(\d+)\s+(\d+)x(\d+)\s*', text)
        if m is None or m.group(2) not in AMP_DTYPES:
            raise ValueError(f"a case is '<eval|train> <{'|'.join(AMP_DTYPES)}> b<batch> "
                             f"<H>x<W>', e.g. 'eval fp16 b2 800x1344'; got {text!r}")
        mode, amp, batch, h, w = m.groups()
        return cls((int(h), int(w)), int(batch), amp, mode == 'train')


def make_cases(sizes: Sequence[Size] = DEFAULT_SIZES, batches: Sequence[int] = (1, ),
               amps: Sequence[str] = ('fp32', ), train: bool = False) -> List[Case]:
    """Every combination of ``sizes`` x ``batches`` x ``amps``, in that nesting order."""
    return [Case(tuple(s), b, a, train) for s in sizes for b in batches for a in amps]


#: the GPU matrix: batch 1 and 2 at 800x1344, batch 16 at 512x512, batch 1 at 1600x2688;
#: eval in fp32 and under fp16 autocast, training step under fp16 AMP
GPU_SHAPES: Tuple[Tuple[Size, int], ...] = (
    ((800, 1344), 1), ((800, 1344), 2), ((512, 512), 16), ((1600, 2688), 1))
PRESETS: Dict[str, Tuple[Case, ...]] = {
    'gpu': tuple(Case(size, batch, amp, train) for size, batch in GPU_SHAPES
                 for amp, train in (('fp32', False), ('fp16', False), ('fp16', True))),
}


def parse_size(text: str) -> Size:
    """``'800x1344'`` -> ``(800, 1344)``; ``'512'`` -> ``(512, 512)``."""
    h, _, w = text.lower().partition('x')
    try:
        size = int(h), int(w or h)
    except ValueError:
        size = (0, 0)
    if min(size) < 1:
        raise ValueError(f'a size is HxW (or one side for a square) of ints >= 1, got {text!r}')
    return size


def training_loss(outs: Sequence[torch.Tensor]) -> torch.Tensor:
    """The benchmark's loss: the sum over the output maps of their mean (float32; a
    classifier in train mode outputs its loss terms, so this is their sum)."""
    return sum(o.float().mean() for o in outs)


def make_step(model: nn.Module, x: torch.Tensor, case: Case) -> Callable[[], Any]:
    """The call that ``case`` times: a no_grad eval forward, or a training step."""
    dtype = AMP_DTYPES[case.amp]
    dev = x.device.type

    def autocast():
        return torch.autocast(dev, dtype=dtype) if dtype is not None else nullcontext()

    if not case.train:
        def forward():
            with torch.no_grad(), autocast():
                return model(x)
        return forward

    scaler = torch.amp.GradScaler(dev) if case.amp == 'fp16' else None
    # whole classifiers (bench.classifiers) also step their optimizer; backbones do not
    optimizer_step = getattr(model, 'optimizer_step', None)

    def train_step():
        model.zero_grad(set_to_none=True)
        with autocast():
            loss = training_loss(model(x))
        (scaler.scale(loss) if scaler is not None else loss).backward()
        if optimizer_step is not None:
            optimizer_step(scaler)
        return loss
    return train_step
