"""A trained SLAB detector through mmdeploy to ONNX Runtime, evaluated against PyTorch.

    python tools/mmdeploy_ort.py CONFIG CHECKPOINT --work-dir work_dirs/ort \\
        [--deploy-cfg configs/mmdeploy/mask-rcnn_onnxruntime_dynamic.py]

1. folds the checkpoint (as tools/deploy.py; skipped if CONFIG's backbone is folded),
2. converts the folded model with mmdeploy (torch2onnx) -> WORK_DIR/end2end.onnx,
3. evaluates it with mmdeploy's test runner in ONNX Runtime (CPU) on CONFIG's test split,
   checks it against the same mmdeploy-rewritten model run in PyTorch, and evaluates the
   folded PyTorch model on the same split (as `mim test`),
4. prints and writes WORK_DIR/report.md and report.json: box / mask AP of both, their
   difference, and how the detections compare.

Needs the deploy extra (`pip install -e .[deploy]`; `make test` installs it).
"""
import argparse
import sys
import warnings

from mmslab.mmdeploy_ort import DEPLOY_CFG, deploy_and_evaluate, report_markdown


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument('config', help='mmdet config of the trained detector')
    parser.add_argument('checkpoint', help='its checkpoint (trained or folded; kept untouched)')
    parser.add_argument('--work-dir', required=True, help='where the outputs go')
    parser.add_argument('--deploy-cfg', default=DEPLOY_CFG, help='mmdeploy deploy config')
    parser.add_argument('--skip-torch', action='store_true',
                        help='evaluate ONNX Runtime only (no PyTorch run, no comparison)')
    parser.add_argument('--max-ap-diff', type=float, default=None,
                        help='exit 1 if |AP(ORT) - AP(PyTorch)| of box or mask mAP exceeds it')
    args = parser.parse_args(argv)
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
