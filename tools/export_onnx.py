"""Export a (folded) SLAB backbone to ONNX and check it in ONNX Runtime.

From an mmdet / mmseg config and its checkpoint (the whole model's, trained, or folded by
tools/deploy.py together with the <stem>_config.py it wrote) -- the model's backbone:

    python tools/export_onnx.py OUT.onnx --config CONFIG [--checkpoint CKPT]

From a released ImageNet file (loaded through init_cfg=dict(type='Pretrained', ...)):

    python tools/export_onnx.py slab_pvt_t.onnx --family pvt --arch tiny \\
        --checkpoint slab_pvt_tiny.pth

The backbone is folded (switch_to_deploy) unless it is already and exported with a dynamic
batch / height / width by --exporter: `dynamo` (torch.onnx.export(..., dynamo=True):
torch.export with dynamic_shapes, opset 18; the default where torch supports it) or
`torchscript` (dynamo=False, dynamic_axes, opset 17; what mmdeploy uses). It is then run in
ONNX Runtime (CPU) at the --check-shapes (default: 1x3x193x257, 2x3x255x161, 1x3x321x479,
2x3x97x141, none equal to the export --shape) next to PyTorch. OUT is written (atomically,
never onto an input) only if the largest relative error max|ort - torch| / max|torch| is
<= --rtol (1e-4). Needs the deploy extra (`pip install -e .[deploy]`).
"""
import argparse
import json
import sys
import warnings

from mmengine.config import DictAction

from mmslab.fileio import atomic_write_text, check_outputs
from mmslab.onnx_export import (CHECK_SHAPES, EXPORT_SHAPE, FAMILIES, RTOL, export_backbone,
                                load_backbone)
from mmslab.onnx_exporters import (EXPORTER_LABELS, EXPORTERS, MIN_OPSETS, OPSETS,
                                   default_exporter, dynamo_unsupported_reason)
from mmslab.validation import argparse_float, argparse_int, argparse_path


def parse_shape(text: str):
    parts = [int(v) for v in text.lower().split('x')]
    if len(parts) == 2:
        parts = [1, 3] + parts
    if len(parts) != 4 or min(parts) < 1:
        raise argparse.ArgumentTypeError(f'expected BxCxHxW or HxW, got {text!r}')
    return tuple(parts)


def main(argv=None) -> int:
    reason = dynamo_unsupported_reason()
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter,
        epilog=f'default exporter here: {EXPORTER_LABELS[default_exporter()]}'
        + (f' (dynamo: {reason})' if reason else ''))
    parser.add_argument('out', type=argparse_path, help='the ONNX file to write')
    src = parser.add_mutually_exclusive_group(required=True)
    src.add_argument('--config', help='mmdet / mmseg config whose model.backbone is exported')
    src.add_argument('--family', choices=sorted(FAMILIES),
                     help='a released ImageNet backbone (with --checkpoint)')
    parser.add_argument('--checkpoint', help='the model checkpoint (with --config) or the '
                        'released file (with --family)')
    parser.add_argument('--arch', default='tiny', help="with --family: 'tiny', 'small', ...")
    parser.add_argument('--shape', type=parse_shape, default=EXPORT_SHAPE,
                        help='export input BxCxHxW (default %(default)s)')
    parser.add_argument('--check-shapes', type=parse_shape, nargs='+', default=CHECK_SHAPES,
                        help='ONNX Runtime vs PyTorch at these inputs BxCxHxW')
    parser.add_argument('--rtol', type=argparse_float(min=0, min_open=True), default=RTOL)
    parser.add_argument('--exporter', choices=EXPORTERS, default=None,
                        help=f'dynamo (dynamic_shapes, opset >= {MIN_OPSETS["dynamo"]}) or '
                             f'torchscript (dynamic_axes); default {default_exporter()} here')
    parser.add_argument('--opset', type=argparse_int(min=14), default=None,
                        help=f'ONNX opset (default {OPSETS["dynamo"]} dynamo, '
                             f'{OPSETS["torchscript"]} torchscript; >= 14: '
                             'scaled_dot_product_attention)')
    parser.add_argument('--threads', type=argparse_int(min=1), default=None,
                        help='ONNX Runtime intra-op threads for the check')
    parser.add_argument('--report', type=argparse_path,
                        help='also write the check as JSON to this file')
    parser.add_argument('--cfg-options', nargs='+', action=DictAction)
    args = parser.parse_args(argv)
    if args.family and not args.checkpoint:
        parser.error('--family needs --checkpoint (the released file)')
    if args.exporter == 'dynamo' and reason:
        parser.error(f"--exporter dynamo is not supported here: {reason}; accepted: "
                     "--exporter torchscript")
    exporter = args.exporter or default_exporter()
    if args.opset is not None and args.opset < MIN_OPSETS[exporter]:
        parser.error(f'--exporter {exporter} needs --opset >= {MIN_OPSETS[exporter]}, got '
                     f'{args.opset}')
    if args.shape in args.check_shapes:
        parser.error(f'--check-shapes must differ from the export --shape {args.shape}: the '
                     'check is that the graph holds for other sizes')

    warnings.filterwarnings('ignore', category=DeprecationWarning)
    inputs = {'config': args.config, 'checkpoint': args.checkpoint}
    check_outputs({'ONNX file': args.out, 'report': args.report}, inputs, 'export_onnx')
    model = load_backbone(args.config, args.checkpoint, args.family, args.arch,
                          args.cfg_options)
    report = export_backbone(model, args.out, args.shape, args.check_shapes, args.rtol,
                             args.opset, args.threads, inputs=inputs,
                             raise_on_failure=False, exporter=exporter)
    print(report.table())
    if args.report:
        atomic_write_text(json.dumps(report.to_dict(), indent=1) + '\n', args.report)
    if not report.passed:
        print(f'NOT written: {args.out}', file=sys.stderr)
        return 1
    print(f'wrote {args.out}')
    return 0


if __name__ == '__main__':
    sys.exit(main())
