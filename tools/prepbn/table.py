"""The study's markdown table: one row per variant (and BN recalibration), box / mask AP
as mean +- sample std over the seeds, s/iter of the fastest seed."""
import statistics
from typing import List

from .variants import VARIANTS


def mean_std(values: List[float]) -> str:
    if len(values) == 1:
        return f'{values[0]:.3f}'
    return f'{statistics.mean(values):.3f} ± {statistics.stdev(values):.3f}'


def table(results: List[dict], command: str, setup: str) -> str:
    """Markdown table: one row per variant (and recalibration), in the given order."""
    rows, order = {}, []
    for r in results:
        if r['variant'] not in rows:
            order.append(r['variant'])
        rows.setdefault(r['variant'], []).append(r)
    lines = [f'`{command}`', '', setup, '',
             '| variant | ends foldable | box AP | mask AP | s/iter | seeds |',
             '|---|---|---|---|---|---|']
    for name in order:
        rs = rows[name]
        base = name.split('+recal')[0]
        label = VARIANTS[base]['label']
        if '+recal' in name:
            label += f' + BN recalibration over {rs[0]["recal_iters"]} batches'
        fold = 'yes' if VARIANTS[base]['foldable'] and all(
            (r['final_lam'] or 0.0) == 0.0 for r in rs) else 'no'
        s_iter = '—' if '+recal' in name else f'{min(r["s_per_iter"] for r in rs):.2f}'
        lines.append(f'| {label} | {fold} | {mean_std([r["bbox_mAP"] for r in rs])} | '
                     f'{mean_std([r["segm_mAP"] for r in rs])} | {s_iter} | '
                     f'{", ".join(str(r["seed"]) for r in rs)} |')
    return '\n'.join(lines) + '\n'
