"""The benchmark's report: the markdown table (with its header and legend), the
latency-vs-megapixels plot, and the files of a run (``benchmark.md`` with the targets,
``benchmark.json``, the PNG), each written atomically."""
import io
import json
import os.path as osp
from dataclasses import asdict
from typing import List, Optional

from mmslab.fileio import atomic_write, atomic_write_text
from mmslab.timing import spread

from .models import COMPILED, base_name, label
from .result import BenchmarkResult


def _unit(res: BenchmarkResult):
    """Latency unit, scale and digits of the table: ms on CUDA, s on the CPU."""
    return ('ms', 1e3, 2) if res.cuda else ('s', 1.0, 3)


def header(res: BenchmarkResult) -> str:
    gemm = (f'dense GEMM ({res.env.get("gemm_n", "2048")}^3 torch.mm) fp32 '
            f'{" / ".join(f"{g:.0f}" for g in res.gemm_gflops)} GFLOP/s (start / after '
            f'each case)' + ''.join(f', {k} ({res.env.get("gemm_amp_n", "")}^3) {v:.3g}'
                                    for k, v in res.gemm_amp.items()))
    load = ('1-min load average at start / after each case: '
            + ' / '.join(f'{x:.2f}' for x in res.load))
    if res.cuda:
        e = res.env
        return (f'{e.get("gpu", "CUDA")}; torch {e["torch"]}, CUDA {e.get("cuda")}, '
                f'cuDNN {e.get("cudnn")}; TF32: torch.backends.cuda.matmul.allow_tf32='
                f'{e.get("matmul_tf32")}, torch.backends.cudnn.allow_tf32='
                f'{e.get("cudnn_tf32")}; cudnn.benchmark={e.get("cudnn_benchmark")}; '
                f'latency: CUDA events, median of {res.repeat} '
                f'interleaved rounds (each of `inner` back-to-back calls) after '
                f'{res.warmup} warm-up calls; {gemm}; {load}')
    return (f'CPU, threads={res.threads}; latency: wall time, median of {res.repeat} '
            f'interleaved rounds after {res.warmup} warm-up; {gemm}; '
            f'{res.env.get("cpu", "")}; torch {res.env["torch"]}; '
            f'allocator: {res.env.get("allocator", "-")}; {load}')


def _legend(res: BenchmarkResult) -> str:
    mem = ('peak alloc = torch.cuda.max_memory_allocated over one call minus what was '
           'allocated before it (activations, temporaries, train: gradients); peak incl. '
           'weights = that + the model\'s parameters and buffers' if res.cuda else
           'peak alloc = peak of live bytes the call allocated through the torch CPU '
           'allocator (profiler memory events; activations + temporaries (+ gradients), '
           'no weights, no library scratch); peak RSS growth = VmHWM after - VmRSS '
           'before the timed calls (max over rounds; OS view, includes scratch, blurred '
           'by allocator reuse); page faults = minor page faults of the process per timed '
           'call (median): first touches of memory the allocator had given back to the '
           'OS, each zeroed by the kernel; --allocator retain keeps freed memory '
           '(tools/bench/allocator.py)')
    text = ('mode = eval (torch.no_grad forward) or train (zero_grad + forward + '
            'backward of sum(mean(map)); classifiers: of their head loss on random '
            'labels, + their config\'s optimizer step) and the autocast dtype (fp32: '
            'none); vs stock = latency / latency of the mmdet backbone of the same family '
            'in the same case (Swin-T-PRepBN: mmdet Swin-T; the classifiers: mmpretrain\'s '
            'Swin-T classifier); GMAC = 1e9 multiply-accumulates of '
            'the forward\'s linear/matmul/conv/attention ops (mmengine FlopAnalyzer, '
            'element-wise ops not counted); GFLOP/s = 2 x MAC / median latency (eval '
            'only); % of GEMM against the GEMM rate of the same dtype; ' + mem + '.')
    if res.compiled:
        text += (' compile s = first call - median (the first call of a case '
                 'compiles); vs eager = compiled / eager latency.')
    return text


def table(res: BenchmarkResult) -> str:
    """The markdown table of every measurement, with the header, warnings and legend."""
    mb = lambda b: '-' if b is None else f'{b / 2 ** 20:.0f}'  # noqa: E731
    unit, scale, digits = _unit(res)
    last = 'peak incl. weights MB' if res.cuda else 'peak RSS growth MB'
    cols = ['backbone', 'input (HxW)', 'batch', 'mode', 'MPix',
            f'latency {unit}: median [min, max]', 'vs stock', 'GMAC', 'GFLOP/s',
            '% of GEMM', 'peak alloc MB', last]
    if not res.cuda:
        cols.append('page faults')
    if res.compiled:
        cols += ['compile s', 'vs eager']
    lines = [header(res), '', '| ' + ' | '.join(cols) + ' |', '|' + '---|' * len(cols)]
    for m in res.measurements:
        h, w = m.size
        stock = res.stock(m)
        vs = f'{m.median / stock.median:.2f}x' if stock else ''
        gf = m.gflops
        rate = res.gemm_rate(m.amp)
        row = [label(m.model), f'{h}x{w}', str(m.batch), m.case.mode,
               f'{m.batch * h * w / 1e6:.2f}', spread(m.times, scale, digits), vs,
               '-' if m.macs is None else f'{m.macs / 1e9:.3g}',
               '-' if gf is None else f'{gf:.1f}',
               '-' if gf is None or not rate else f'{100 * gf / rate:.0f}%',
               mb(m.peak_bytes), mb(m.peak_total_bytes if res.cuda else m.rss_bytes)]
        if not res.cuda:
            row.append('-' if m.faults_per_call is None else str(m.faults_per_call))
        if res.compiled:
            eager = res.get(base_name(m.model), m.case) \
                if m.model.endswith(COMPILED) else None
            row += ['-' if m.compile_s is None else f'{m.compile_s:.1f}',
                    f'{m.median / eager.median:.2f}x' if eager else '']
        lines.append('| ' + ' | '.join(row) + ' |')
    if max(res.gemm_gflops) > 1.15 * min(res.gemm_gflops):
        lines.insert(1, '\nWARNING: the GEMM rate moved by more than 15% during the run: '
                        'the machine was not quiet, latencies are not reliable.')
    lines += ['', _legend(res)]
    for model, ops in res.missed_ops.items():
        if ops:
            lines.append(f'WARNING: matmul-type ops not counted for {model}: {ops}')
    for what, error in res.failures.items():
        lines.append(f'FAILED: {what}: {error}')
    return '\n'.join(lines)


def plot(res: BenchmarkResult, path: str) -> None:
    """Latency vs megapixels per call (batch x H x W), one panel per mode, as a PNG
    written atomically to ``path``."""
    import matplotlib
    matplotlib.use('Agg')
    import matplotlib.pyplot as plt
    modes = list(dict.fromkeys(m.case.mode for m in res.measurements))
    fig, axes = plt.subplots(1, len(modes), figsize=(7 * len(modes), 4.5), squeeze=False)
    colours = dict(slab_pvt_t='tab:blue', pvt_t='tab:cyan', slab_swin_t='tab:red',
                   swin_t='tab:orange', swin_prepbn_t='tab:purple')
    unit, scale, _ = _unit(res)
    where = (res.env.get('gpu', 'CUDA') if res.cuda else f'CPU, {res.threads} threads')
    for ax, mode in zip(axes[0], modes):
        for model in dict.fromkeys(m.model for m in res.measurements):
            ms = sorted((m for m in res.measurements
                         if m.model == model and m.case.mode == mode),
                        key=lambda m: (m.batch * m.size[0] * m.size[1], m.batch))
            if not ms:
                continue
            base = base_name(model)
            ax.plot([m.batch * m.size[0] * m.size[1] / 1e6 for m in ms],
                    [m.median * scale for m in ms],
                    marker='s' if model.endswith(COMPILED) else 'o',
                    linestyle='--' if base.endswith('_deploy') else
                    (':' if model.endswith(COMPILED) else '-'),
                    color=colours.get(base.removesuffix('_deploy')), label=label(model))
        ax.set_xscale('log')
        ax.set_yscale('log')
        ax.set_xlabel('megapixels per call (batch x H x W)')
        ax.set_ylabel(f'latency, {unit} (median)')
        ax.set_title(f'{where}: {mode}')
        ax.grid(True, which='both', alpha=0.3)
        ax.legend(fontsize='small')
    fig.tight_layout()
    buf = io.BytesIO()
    fig.savefig(buf, format='png', dpi=120)
    plt.close(fig)
    with atomic_write(path, 'wb') as f:
        f.write(buf.getvalue())


def write_report(res: BenchmarkResult, out_dir: str, target_lines: List[str],
                 plot_name: Optional[str] = None) -> str:
    """Write ``benchmark.md`` (table + ``target_lines``), ``benchmark.json`` and, given
    ``plot_name``, the PNG into ``out_dir``; return the markdown."""
    report = table(res) + '\n\nTargets:\n' + '\n'.join(target_lines) + '\n'
    atomic_write_text(report, osp.join(out_dir, 'benchmark.md'))
    atomic_write_text(json.dumps(asdict(res), indent=1), osp.join(out_dir, 'benchmark.json'))
    if plot_name:
        plot(res, osp.join(out_dir, plot_name))
    return report
