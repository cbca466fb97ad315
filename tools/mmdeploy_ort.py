"""A trained SLAB detector through mmdeploy to ONNX Runtime, evaluated against PyTorch.

    python tools/mmdeploy_ort.py CONFIG CHECKPOINT --work-dir work_dirs/ort \\
        [--deploy-cfg configs/mmdeploy/mask-rcnn_onnxruntime_dynamic.py]

1. folds the checkpoint (as tools/deploy.py; skipped if CONFIG's backbone is folded),
2. converts the folded model with mmdeploy (torch2onnx, with torch.onnx's TorchScript
   exporter) -> WORK_DIR/end2end.onnx,
3. evaluates it with mmdeploy's test runner in ONNX Runtime (CPU) on CONFIG's test split,
   checks it against the same mmdeploy-rewritten model run in PyTorch, and evaluates the
   folded PyTorch model on the same split (as `mim test`),
4. prints and writes WORK_DIR/report.md and report.json: box / mask AP of both, their
   difference, and how the detections compare.

Needs the deploy extra (`pip install -e .[deploy]`; `make test` installs it).
"""
import argparse
import os.path as osp
import sys
import warnings

from mmslab.mmdeploy_ort import deploy_and_evaluate, report_markdown
from mmslab.validation import argparse_float, argparse_path

REPO = osp.dirname(osp.dirname(osp.abspath(__file__)))
DEPLOY_CFG = osp.join(REPO, 'configs', 'mmdeploy', 'mask-rcnn_onnxruntime_dynamic.py')


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument('config', type=argparse_path,
                        help='mmdet config of the trained detector')
    parser.add_argument('checkpoint', type=argparse_path,
                        help='its checkpoint (trained or folded; kept untouched)')
    parser.add_argument('--work-dir', type=argparse_path, required=True,
                        help='where the outputs go')
    parser.add_argument('--deploy-cfg', type=argparse_path, default=DEPLOY_CFG,
                        help='mmdeploy deploy config (default: %(default)s)')
    parser.add_argument('--skip-torch', action='store_true',
                        help='evaluate ONNX Runtime only (no PyTorch run, no comparison)')
    parser.add_argument('--max-ap-diff', type=argparse_float(min=0), default=None,
                        help='exit 1 if |AP(ORT) - AP(PyTorch)| of box or mask mAP exceeds it')
    args = parser.parse_args(argv)
    for flag, path in (('config', args.config), ('--deploy-cfg', args.deploy_cfg)):
        if not osp.isfile(path):
            parser.error(f'argument {flag}: no such file: {path}')
    warnings.filterwarnings('ignore', category=DeprecationWarning)
    report = deploy_and_evaluate(args.config, args.checkpoint, args.work_dir,
                                 args.deploy_cfg, skip_torch=args.skip_torch)
    print('\n' + report_markdown(report))
    print(f'\nwrote {args.work_dir}/report.md, report.json and end2end.onnx')
    if args.max_ap_diff is not None and 'ap_diff' in report:
        worst = max(abs(report['ap_diff'][k]) for k in ('bbox_mAP', 'segm_mAP'))
        if worst > args.max_ap_diff:
            print(f'AP differs by {worst:.4f} > {args.max_ap_diff}', file=sys.stderr)
            return 1
    return 0


if __name__ == '__main__':
    sys.exit(main())
