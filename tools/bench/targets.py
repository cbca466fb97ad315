"""Speed / memory targets: ratios of two measurements, read from a CSV table
(``tools/benchmark_targets.csv``) and judged on what a run measured.

A row: ``name`` (what the target is about), ``device`` (``cpu`` / ``cuda``: the targets of
the device that ran are judged), ``statistic`` (``latency``: medians, the ratio of the
minima -- the least disturbed rounds -- shown next to it; ``memory``: peak allocation, on
CUDA including the weights), ``numerator`` / ``denominator`` (model names,
:data:`~bench.models.MODELS`), ``case`` (``str(Case)``, e.g. ``eval fp16 b2 800x1344``),
``denominator_case`` (empty: the same case) and ``max_ratio`` (met when the ratio is at
most this). A target whose models or case were not run says so; when compiled twins ran,
they are judged alike.
"""
import csv
import os.path as osp
from dataclasses import dataclass
from typing import Callable, List, Optional

from .cases import Case
from .models import COMPILED, MODELS, label
from .result import BenchmarkResult, Measurement

DEFAULT_TARGETS = osp.join(osp.dirname(osp.dirname(osp.abspath(__file__))),
                           'benchmark_targets.csv')
COLUMNS = ('name', 'device', 'statistic', 'numerator', 'denominator', 'case',
           'denominator_case', 'max_ratio')
STATISTICS = ('latency', 'memory')


@dataclass(frozen=True)
class Target:
    name: str
    device: str
    statistic: str
    numerator: str
    denominator: str
    case: Case
    denominator_case: Case
    max_ratio: float


def load_targets(path: str = DEFAULT_TARGETS) -> List[Target]:
    """The targets of the CSV file ``path``; a malformed row raises ``ValueError`` naming
    the file, the line and what is wrong."""
    with open(path, newline='') as f:
        reader = csv.DictReader(f)
        if tuple(reader.fieldnames or ()) != COLUMNS:
            raise ValueError(f'{path}: the header must be {",".join(COLUMNS)}, got '
                             f'{",".join(reader.fieldnames or ())}')
        targets = []
        for row in reader:
            where = f'{path}, line {reader.line_num}'
            try:
                targets.append(_target(row))
            except ValueError as e:
                raise ValueError(f'{where}: {e}') from None
    return targets


def _target(row: dict) -> Target:
    if row['device'] not in ('cpu', 'cuda'):
        raise ValueError(f"device must be cpu or cuda, got {row['device']!r}")
    if row['statistic'] not in STATISTICS:
        raise ValueError(f'statistic must be one of {list(STATISTICS)}, got '
                         f"{row['statistic']!r}")
    for key in ('numerator', 'denominator'):
        if row[key] not in MODELS:
            raise ValueError(f'{key} must be one of {list(MODELS)}, got {row[key]!r}')
    try:
        limit = float(row['max_ratio'])
    except ValueError:
        raise ValueError(f"max_ratio must be a number, got {row['max_ratio']!r}") from None
    case = Case.parse(row['case'])
    den_case = Case.parse(row['denominator_case']) if row['denominator_case'] else case
    return Target(row['name'], row['device'], row['statistic'], row['numerator'],
                  row['denominator'], case, den_case, limit)


def _ratio(res: BenchmarkResult, t: Target, suffix: str,
           stat: Callable[[Measurement], Optional[float]]) -> Optional[float]:
    a = res.get(t.numerator + suffix, t.case)
    b = res.get(t.denominator + suffix, t.denominator_case)
    if a is None or b is None:
        return None
    va, vb = stat(a), stat(b)
    return None if va is None or vb is None else va / vb


def evaluate(res: BenchmarkResult, targets: List[Target]) -> List[str]:
    """One line per target of the device that ran: the measured ratio and whether it is
    met, or that it was not measured in this run."""
    device = 'cuda' if res.cuda else 'cpu'
    out: List[str] = []
    for t in (t for t in targets if t.device == device):
        for suffix in ('', COMPILED) if res.compiled else ('', ):
            if t.statistic == 'memory':
                v = _ratio(res, t, suffix, (lambda m: m.peak_total_bytes) if res.cuda
                           else (lambda m: m.peak_bytes))
                extra = ''
            else:
                v = _ratio(res, t, suffix, lambda m: m.median)
                by_min = _ratio(res, t, suffix, lambda m: min(m.times))
                extra = '' if by_min is None else f' (minima: {by_min:.3f})'
            cases = str(t.case) if t.denominator_case == t.case \
                else f'{t.case} / {t.denominator_case}'
            text = (f'- {t.name}: {label(t.numerator + suffix)} / '
                    f'{label(t.denominator + suffix)} {t.statistic} ({cases}, target <= '
                    f'{t.max_ratio:g})')
            if v is None:
                if not suffix:
                    out.append(f'{text}: not measured in this run')
                continue
            out.append(f'{text}: {v:.3f}{extra} -> {"met" if v <= t.max_ratio else "NOT met"}')
    return out
