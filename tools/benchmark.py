"""Benchmark the SLAB backbones against mmdet's PVT-T / Swin-T, on CPU or CUDA.

CPU (eval forward, batch 1, fp32; the README's CPU table):

    python tools/benchmark.py --threads 2 --repeat 3 \\
        --sizes 512x512 800x1344 1600x2688 --out-dir work_dirs/benchmark

CUDA, the whole GPU matrix in one run (eval fp32, eval fp16 autocast, fp16 AMP training
step; batch 1 and 2 at 800x1344, batch 16 at 512x512, batch 1 at 1600x2688):

    python tools/benchmark.py --preset gpu --out-dir work_dirs/benchmark_gpu

Other modes: --device cuda|cpu, --amp fp32 fp16 bf16 (autocast dtypes, several allowed),
--train (training step: forward + backward), --batch N [N ...], --compile (also time a
torch.compile'd twin of every model; compile time reported separately), --tf32 on|off,
--models ..., --allocator retain (glibc keeps freed memory: the calls' page faults of
fresh memory, counted in the table, go away), --mini (smoke test), --ort (ONNX Runtime
vs PyTorch instead; --exporters dynamo torchscript: one row per exporter).

Whole ImageNet classifiers (mmpretrain ImageClassifier; docs/classification.md, "Speed
(CPU)"), named with --models only: mmpretrain's Swin-T classifier and the SLAB-Swin-T /
SLAB-PVT-T classifiers of configs/cls/ (+ folded); --train is their training step (head
loss on random labels, backward, the config's optimizer step):

    python tools/benchmark.py --models swin_t_cls slab_swin_t_cls_deploy \\
        slab_pvt_t_cls_deploy --sizes 224x224 --batch 1 8 --repeat 7

PRepBN in stock mmdet modules (LayerNorm / PRepBN at lam = 0 / folded; docs/prepbn.md,
"Speed"): mmdet's PVTv2-b0 and the Deformable DETR encoder of configs/prepbn/ -- for the
encoder, a size is the image whose multi-scale tokens it encodes:

    python tools/benchmark.py --models deformable_detr_encoder \
        deformable_detr_encoder_prepbn deformable_detr_encoder_prepbn_deploy \
        --sizes 800x1344 --repeat 5

Prints a markdown table and the targets of the device that ran (--targets, default
tools/benchmark_targets.csv), writes benchmark.md / .json (also after every case, so a run
cut short keeps what it measured) and a latency-vs-megapixels plot. See tools/bench/ for
what is measured and how. mmslab must be importable (installed, or `PYTHONPATH=.` in a
checkout).
"""
import argparse
import json
import os.path as osp
import sys
import warnings
from dataclasses import asdict
from typing import Optional, Sequence

from bench.allocator import MODES as ALLOCATOR_MODES
from bench.cases import AMP_DTYPES, DEFAULT_SIZES, PRESETS, make_cases, parse_size
from bench.models import DEFAULT_MODELS, MODELS
from bench.report import write_report
from bench.run import Options, run_benchmark
from bench.targets import DEFAULT_TARGETS, evaluate, load_targets
from mmslab.fileio import atomic_write_text
from mmslab.validation import argparse_int, argparse_path


def _size(text: str):
    try:
        return parse_size(text)
    except ValueError as e:
        raise argparse.ArgumentTypeError(str(e)) from None


def parse_args(argv: Optional[Sequence[str]] = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument('--device', choices=['cpu', 'cuda'], default=None,
                        help='default: cpu (cuda with --preset gpu)')
    parser.add_argument('--preset', choices=list(PRESETS), default=None,
                        help='gpu: the GPU matrix -- eval fp32, eval fp16 autocast and fp16 '
                             'AMP training step at batch 1 and 2 x 800x1344, batch 16 x '
                             '512x512, batch 1 x 1600x2688 (replaces --sizes/--batch/--amp/'
                             '--train)')
    parser.add_argument('--sizes', nargs='+', type=_size, default=None,
                        help='input sizes HxW (default: 512x512 800x1344 1600x2688)')
    parser.add_argument('--batch', nargs='+', type=argparse_int(min=1), default=[1],
                        help='batch size(s)')
    parser.add_argument('--amp', nargs='+', choices=list(AMP_DTYPES), default=['fp32'],
                        help='autocast dtype(s) of the call; fp32 = no autocast')
    parser.add_argument('--train', action='store_true',
                        help='time a training step (forward + backward) instead of eval')
    parser.add_argument('--compile', action='store_true',
                        help='also time a torch.compile\'d twin of every model')
    parser.add_argument('--compile-backend', default='inductor',
                        help='torch.compile backend (default inductor)')
    parser.add_argument('--compile-mode', default=None,
                        help='torch.compile mode (inductor), e.g. reduce-overhead (CUDA graphs)')
    parser.add_argument('--tf32', choices=['default', 'on', 'off'], default='default',
                        help='CUDA: set torch.backends.{cuda.matmul,cudnn}.allow_tf32')
    parser.add_argument('--allocator', choices=list(ALLOCATOR_MODES), default='default',
                        help='retain: glibc keeps the memory the process frees (no page '
                             'faults of fresh memory per call, as with jemalloc / tcmalloc); '
                             'default: the allocator as launched (tools/bench/allocator.py)')
    parser.add_argument('--repeat', type=argparse_int(min=1), default=None,
                        help='timed rounds, median of them (default: 3 on CPU, 7 on CUDA)')
    parser.add_argument('--warmup', type=argparse_int(min=0), default=None,
                        help='untimed rounds first (default: 1 on CPU, 3 on CUDA)')
    parser.add_argument('--threads', type=argparse_int(min=1), default=2,
                        help='torch.set_num_threads')
    parser.add_argument('--models', nargs='+', default=list(DEFAULT_MODELS),
                        choices=list(MODELS),
                        help='default: all but the ImageNet classifiers (*_cls*)')
    parser.add_argument('--out-dir', type=argparse_path, default='work_dirs/benchmark')
    parser.add_argument('--plot', type=argparse_path, default='latency.png',
                        help='PNG name inside --out-dir')
    parser.add_argument('--targets', type=argparse_path, default=DEFAULT_TARGETS,
                        help='CSV table of the targets (default: %(default)s)')
    parser.add_argument('--mini', action='store_true', help='small widths (smoke test)')
    parser.add_argument('--no-flops', action='store_true', help='skip the MAC count')
    parser.add_argument('--no-memory', action='store_true', help='skip the memory profile')
    parser.add_argument('--ort', action='store_true',
                        help='instead: ONNX Runtime (CPU) vs PyTorch latency of the models '
                             'exported to ONNX (needs the deploy extra); writes ort.md / .json')
    parser.add_argument('--exporters', nargs='+', choices=['dynamo', 'torchscript'],
                        default=None,
                        help='with --ort: the ONNX exporters, one row each (default: dynamo '
                             'and torchscript where torch supports the dynamo exporter, else '
                             'torchscript)')
    return parser.parse_args(argv)


def main(argv: Optional[Sequence[str]] = None):
    args = parse_args(argv)
    device = args.device or ('cuda' if args.preset == 'gpu' else 'cpu')
    cuda = device == 'cuda'
    repeat = args.repeat if args.repeat is not None else (7 if cuda else 3)
    warmup = args.warmup if args.warmup is not None else (3 if cuda else 1)
    sizes = args.sizes or list(DEFAULT_SIZES)
    import mmslab  # noqa: F401  (registers the SLAB modules)
    if args.ort:
        from bench.ort import run_ort_benchmark
        ort = run_ort_benchmark(args.models, sizes, repeat, warmup, args.threads, args.mini,
                                exporters=args.exporters)
        print('\n' + ort.table())
        atomic_write_text(ort.table() + '\n', osp.join(args.out_dir, 'ort.md'))
        atomic_write_text(json.dumps(asdict(ort), indent=1),
                          osp.join(args.out_dir, 'ort.json'))
        print(f'wrote {args.out_dir}/ort.md and ort.json')
        return ort
    targets = load_targets(args.targets)
    options = Options(
        models=args.models,
        cases=PRESETS[args.preset] if args.preset else
        make_cases(sizes, args.batch, args.amp, args.train),
        repeat=repeat, warmup=warmup, threads=args.threads, mini=args.mini,
        flops=not args.no_flops, memory=not args.no_memory, device=device,
        compile=args.compile, compile_backend=args.compile_backend,
        compile_mode=args.compile_mode,
        tf32=None if args.tf32 == 'default' else args.tf32 == 'on', allocator=args.allocator)
    # the results so far after every case (a run cut short keeps them)
    res = run_benchmark(options, on_case=lambda partial: write_report(
        partial, args.out_dir, evaluate(partial, targets)))
    report = write_report(res, args.out_dir, evaluate(res, targets), args.plot)
    print('\n' + report)
    print(f'wrote {args.out_dir}/benchmark.md, benchmark.json and '
          f'{osp.join(args.out_dir, args.plot)}')
    return res


if __name__ == '__main__':
    warnings.filterwarnings('ignore')
    sys.exit(0 if main() is not None else 1)
