"""A whole mmdet detector with a SLAB backbone through mmdeploy to ONNX Runtime.

:func:`deploy_and_evaluate` is the recipe (``tools/mmdeploy_ort.py`` is its command line):

1. fold the trained checkpoint (:func:`mmslab.models.reparameterize.deploy_checkpoint`,
   the same as ``tools/deploy.py``; skipped when the config's backbone is folded already);
2. convert the folded model with mmdeploy's ONNX pipeline (``mmdeploy.apis.torch2onnx``,
   with torch.onnx's TorchScript exporter: :func:`torchscript_onnx_export`, and the one
   torch.onnx helper of mmdeploy 1.3.1 that current torch removed: ``_cast_long_symbolic``)
   under a deploy config, by default :data:`DEPLOY_CFG` (shipped in the package:
   ``mmslab/deploy_configs/mask_rcnn_onnxruntime_dynamic.py``; ONNX Runtime, dynamic
   batch / height / width);
3. evaluate the ONNX file with mmdeploy's test runner (what mmdeploy's ``tools/test.py``
   does: ``build_task_processor`` -> ``build_backend_model`` -> ``build_test_runner``) on
   the config's test split, and the folded PyTorch model with mmengine's Runner on the
   same split (what ``mim test`` does), both dumping their detections;
4. report box / mask AP of both, their difference, and how the detections compare.

Needs the ``deploy`` extra (mmdeploy 1.3.1, onnxruntime, onnx; see README).
"""
import contextlib
import functools
import importlib
import json
import os
import os.path as osp
import pickle
import time
from typing import Any, Dict, Iterator, List, Optional, Sequence, Tuple

import numpy as np
import torch

from .config import load_config
from .deploy_configs import MASK_RCNN_ORT_DYNAMIC
from .fileio import atomic_write_text, check_outputs
from .onnx_export import ort_session, torchscript_export_kwargs

DEPLOY_CFG = MASK_RCNN_ORT_DYNAMIC
AP_KEYS = ('bbox_mAP', 'bbox_mAP_50', 'bbox_mAP_75', 'segm_mAP', 'segm_mAP_50', 'segm_mAP_75')


@contextlib.contextmanager
def torchscript_onnx_export() -> Iterator[None]:
    """While the block runs, ``torch.onnx.export`` defaults to its TorchScript exporter.

    Why: mmdeploy 1.3.1 calls ``torch.onnx.export(model, args, path, export_params=...,
    ...)`` without ``dynamo``, and its rewriters (``RewriterContext``, the ONNX passes)
    work on the TorchScript exporter's graph; from torch 2.9 that call would run the dynamo
    exporter instead. Where the installed torch's ``torch.onnx.export`` has a ``dynamo``
    argument (:func:`mmslab.onnx_export.torchscript_export_kwargs`, from its signature),
    a call that does not give it gets ``dynamo=False``; a call that gives it is left as it
    is. Without the argument nothing is changed. The original function is put back on
    exit, also on an error."""
    defaults = torchscript_export_kwargs()
    if not defaults:
        yield
        return
    export = torch.onnx.export

    @functools.wraps(export)
    def export_with_torchscript(*args, **kwargs):
        return export(*args, **{**defaults, **kwargs})

    torch.onnx.export = export_with_torchscript
    try:
        yield
    finally:
        torch.onnx.export = export


@contextlib.contextmanager
def _cast_long_symbolic() -> Iterator[None]:
    """While the block runs, ``torch.onnx.symbolic_opset9._cast_Long`` exists.

    Why: mmdeploy 1.3.1's RoIAlign symbolic (``mmdeploy/mmcv/ops/roi_align.py``, every
    Mask R-CNN export to ONNX Runtime) imports that helper, which torch deprecated in 2.0
    ("create a Cast node instead") and has removed by 2.14. Where it is missing, it is
    provided as torch defined it -- ``Cast`` to int64 -- and removed again on exit;
    where torch still has it, nothing is changed."""
    # the module `from torch.onnx.symbolic_opset9 import ...` reads (on torch 2.14 a
    # compatibility module, not the attribute torch.onnx.symbolic_opset9 until imported)
    symbolic_opset9 = importlib.import_module('torch.onnx.symbolic_opset9')
    if hasattr(symbolic_opset9, '_cast_Long'):
        yield
        return

    def _cast_Long(g, input, non_blocking):  # noqa: N802 (torch's name)
        return g.op('Cast', input, to_i=torch._C._onnx.TensorProtoDataType.INT64)

    symbolic_opset9._cast_Long = _cast_Long
    try:
        yield
    finally:
        del symbolic_opset9._cast_Long


def _with_dump(cfg, out_pkl: Optional[str]):
    """``cfg`` with a DumpDetResults evaluator (detections to ``out_pkl``) added."""
    if out_pkl is None:
        return cfg
    evaluator = cfg.test_evaluator
    evaluators = list(evaluator) if isinstance(evaluator, (list, tuple)) else [evaluator]
    cfg.test_evaluator = evaluators + [dict(type='DumpDetResults', out_file_path=out_pkl)]
    return cfg


def fold(config: str, checkpoint: str, work_dir: str) -> Tuple[str, str, Optional[float]]:
    """The folded (config, checkpoint) of a detector: as given if the config is folded
    already (:func:`mmslab.deploy.config_is_folded`), else ``<work_dir>/folded.pth`` + its config written
    by ``deploy_checkpoint``. Returns them and the fold's relative error (or None)."""
    from .deploy import config_is_folded, deploy_checkpoint
    if config_is_folded(load_config(config)):
        return config, checkpoint, None
    out = osp.join(work_dir, 'folded.pth')
    err = deploy_checkpoint(config, checkpoint, out)
    return osp.splitext(out)[0] + '_config.py', out, err


def convert(config: str, checkpoint: str, work_dir: str, deploy_cfg: str = DEPLOY_CFG,
            img: Any = None, img_shape: Tuple[int, int] = (256, 320)) -> str:
    """``mmdeploy.apis.torch2onnx`` of the model (TorchScript exporter): writes
    ``<work_dir>/end2end.onnx``.

    ``img``: the image the export traces (a path or an HxWx3 uint8 array); by default a
    random ``img_shape`` image (the graph has dynamic axes: the size only needs to be
    plausible)."""
    from mmdeploy.apis import torch2onnx
    from mmdeploy.utils import get_onnx_config
    from mmdeploy.utils import load_config as load_deploy_config
    save_file = get_onnx_config(load_deploy_config(deploy_cfg)[0])['save_file']
    out = osp.join(work_dir, save_file)
    check_outputs({'ONNX file': out}, {'config': config, 'checkpoint': checkpoint,
                                       'deploy config': deploy_cfg}, 'mmdeploy_ort')
    if img is None:
        img = np.random.default_rng(0).integers(0, 256, (*img_shape, 3), dtype=np.uint8)
    # (both shims: mmdeploy 1.3.1 on torch >= 2.9, see their docstrings)
    with torchscript_onnx_export(), _cast_long_symbolic():
        torch2onnx(img, work_dir, save_file, deploy_cfg, config, checkpoint, 'cpu')
    return out


def evaluate_ort(config: str, onnx_file: str, work_dir: str, deploy_cfg: str = DEPLOY_CFG,
                 out_pkl: Optional[str] = None) -> Dict[str, float]:
    """Evaluate the ONNX Runtime model on the config's test split with mmdeploy's test
    runner (mmdeploy's ``tools/test.py``, in-process). Returns the metrics."""
    from mmdeploy.apis.utils import build_task_processor
    from mmdeploy.utils import load_config as load_deploy_config
    deploy_cfg, model_cfg = load_deploy_config(deploy_cfg, config)
    model_cfg = _with_dump(model_cfg, out_pkl)
    processor = build_task_processor(model_cfg, deploy_cfg, 'cpu')
    model = processor.build_backend_model([onnx_file], processor.update_data_preprocessor)
    runner = processor.build_test_runner(model, work_dir)
    return dict(runner.test())


def evaluate_torch(config: str, checkpoint: str, work_dir: str,
                   out_pkl: Optional[str] = None) -> Dict[str, float]:
    """Evaluate the PyTorch model on the config's test split with mmengine's Runner (what
    ``mim test mmdet`` does). Returns the metrics."""
    from mmengine.runner import Runner
    cfg = _with_dump(load_config(config), out_pkl)
    cfg.work_dir = work_dir
    cfg.load_from = checkpoint
    cfg.launcher = 'none'
    return dict(Runner.from_cfg(cfg).test())


def test_images(config, num: int) -> List[str]:
    """Paths of the first ``num`` images of the config's test split."""
    from mmengine.registry import init_default_scope
    from mmdet.registry import DATASETS
    cfg = load_config(config)
    init_default_scope(cfg.get('default_scope', 'mmdet'))
    dataset = DATASETS.build(cfg.test_dataloader.dataset)
    return [dataset.get_data_info(i)['img_path'] for i in range(min(num, len(dataset)))]


def check_conversion(config: str, checkpoint: str, onnx_file: str,
                     deploy_cfg: str = DEPLOY_CFG, images: Optional[Sequence[str]] = None,
                     num_images: int = 2) -> Dict[str, Any]:
    """Conversion fidelity: the ONNX file in ONNX Runtime against the *same* mmdeploy-
    rewritten model run in PyTorch (``patch_model`` + ``RewriterContext``, i.e. mmdeploy's
    post-processing on both sides), image by image (batch 1, each at its own size).

    Returns the largest absolute difference of every output (``dets``: boxes in px and
    scores, ``labels``, ``masks``: mask probabilities), whether every output had the same
    shape (the same number of detections) and the number of detections compared."""
    from mmdeploy.apis.utils import build_task_processor
    from mmdeploy.core import RewriterContext, patch_model
    from mmdeploy.utils import IR, get_backend, get_ir_config
    from mmdeploy.utils import load_config as load_deploy_config
    deploy, model_cfg = load_deploy_config(deploy_cfg, config)
    images = list(images) if images is not None else test_images(model_cfg, num_images)
    processor = build_task_processor(model_cfg, deploy, 'cpu')
    model = processor.build_pytorch_model(checkpoint)
    backend = get_backend(deploy).value
    opset = get_ir_config(deploy).get('opset_version', 11)
    patched = patch_model(model, cfg=deploy, backend=backend, ir=IR.ONNX)
    session = ort_session(onnx_file)
    names = [o.name for o in session.get_outputs()]
    diffs = {n: 0.0 for n in names}
    same_shapes = True
    detections = 0
    for img in images:
        data, inputs = processor.create_input(img, None,
                                              data_preprocessor=model.data_preprocessor)
        with RewriterContext(cfg=deploy, backend=backend, opset=opset, ir=IR.ONNX), \
                torch.no_grad():
            ref = patched.forward(inputs, data['data_samples'], mode='predict')
        outs = session.run(None, {session.get_inputs()[0].name: inputs.numpy()})
        detections += int(outs[0].shape[1]) if outs[0].ndim > 1 else 0
        for name, r, o in zip(names, ref, outs):
            r = r.numpy()
            if r.shape != o.shape:
                same_shapes = False
                diffs[name] = float('inf')
            elif r.size:
                diffs[name] = max(diffs[name], float(np.abs(r.astype(np.float64) - o).max()))
    return dict(images=len(images), detections=detections, same_shapes=same_shapes,
                max_abs_diff=diffs)


def compare_detections(ref_pkl: str, pkl: str, top_k: int = 10,
                       score_tol: float = 1e-3) -> Dict[str, Any]:
    """How the detections of ``pkl`` match those of ``ref_pkl`` (DumpDetResults files).

    For every image and each of its ``top_k`` highest-scoring reference detections: the
    nearest detection of the same label whose score is within ``score_tol`` (max abs
    coordinate difference, px). Returns the fraction matched within 0.5 px, the largest
    box distance over matched ones, and the detection counts."""
    with open(ref_pkl, 'rb') as f:
        ref = {p['img_id']: p['pred_instances'] for p in pickle.load(f)}
    with open(pkl, 'rb') as f:
        got = {p['img_id']: p['pred_instances'] for p in pickle.load(f)}
    if sorted(ref) != sorted(got):
        raise ValueError(f'{pkl} and {ref_pkl} hold different images')
    dists: List[float] = []
    n_ref = n_got = 0
    for img_id, pr in ref.items():
        pg = got[img_id]
        n_ref += len(pr['scores'])
        n_got += len(pg['scores'])
        order = np.argsort(-pr['scores'].numpy())[:top_k]
        for j in order:
            ok = (pg['labels'] == pr['labels'][j]) & \
                 ((pg['scores'] - pr['scores'][j]).abs() <= score_tol)
            if ok.any():
                d = (pg['bboxes'][ok] - pr['bboxes'][j]).abs().max(dim=1).values.min()
                dists.append(float(d))
            else:
                dists.append(float('inf'))
    finite = [d for d in dists if np.isfinite(d)]
    return dict(top_k=top_k, score_tol=score_tol, compared=len(dists),
                matched_within_0_5px=sum(d <= 0.5 for d in dists) / max(len(dists), 1),
                max_matched_box_diff_px=max(finite) if finite else None,
                detections_ref=n_ref, detections=n_got)


def deploy_and_evaluate(config: str, checkpoint: str, work_dir: str,
                        deploy_cfg: str = DEPLOY_CFG, img: Any = None,
                        skip_torch: bool = False) -> Dict[str, Any]:
    """Fold, convert with mmdeploy, evaluate ONNX Runtime and PyTorch on the config's
    test split; write ``<work_dir>/report.json`` and ``report.md``; return the report."""
    os.makedirs(work_dir, exist_ok=True)
    check_outputs({'work_dir report': osp.join(work_dir, 'report.json')},
                  {'config': config, 'checkpoint': checkpoint}, 'mmdeploy_ort')
    times: Dict[str, float] = {}
    t = time.perf_counter()
    cfg, ckpt, fold_err = fold(config, checkpoint, work_dir)
    times['fold'] = time.perf_counter() - t
    t = time.perf_counter()
    onnx_file = convert(cfg, ckpt, work_dir, deploy_cfg, img)
    times['convert'] = time.perf_counter() - t
    t = time.perf_counter()
    ort_pkl = osp.join(work_dir, 'ort_detections.pkl')
    ort_metrics = evaluate_ort(cfg, onnx_file, osp.join(work_dir, 'test_ort'), deploy_cfg,
                               ort_pkl)
    times['test_ort'] = time.perf_counter() - t
    t = time.perf_counter()
    conversion = check_conversion(cfg, ckpt, onnx_file, deploy_cfg)
    times['check_conversion'] = time.perf_counter() - t
    report: Dict[str, Any] = dict(
        config=config, checkpoint=checkpoint, folded_config=cfg, folded_checkpoint=ckpt,
        fold_relative_error=fold_err, deploy_cfg=deploy_cfg, onnx=onnx_file,
        versions=_versions(), conversion=conversion, ort=_ap(ort_metrics))
    if not skip_torch:
        t = time.perf_counter()
        torch_pkl = osp.join(work_dir, 'torch_detections.pkl')
        torch_metrics = evaluate_torch(cfg, ckpt, osp.join(work_dir, 'test_torch'), torch_pkl)
        times['test_torch'] = time.perf_counter() - t
        report['torch'] = _ap(torch_metrics)
        report['ap_diff'] = {k: report['ort'][k] - report['torch'][k]
                             for k in report['ort'] if k in report['torch']}
        report['detections'] = compare_detections(torch_pkl, ort_pkl)
    report['seconds'] = times
    atomic_write_text(json.dumps(report, indent=1) + '\n', osp.join(work_dir, 'report.json'))
    atomic_write_text(report_markdown(report) + '\n', osp.join(work_dir, 'report.md'))
    return report


def _ap(metrics: Dict[str, float]) -> Dict[str, float]:
    """CocoMetric's numbers without the ``coco/`` prefix (mAP, mAP_50, ..., mAP_l)."""
    return {k[len('coco/'):]: float(v) for k, v in metrics.items() if k.startswith('coco/')}


def _versions() -> Dict[str, str]:
    import mmcv
    import mmdeploy
    import mmdet
    import onnx
    import onnxruntime
    import torch
    return dict(torch=torch.__version__, mmcv=mmcv.__version__, mmdet=mmdet.__version__,
                mmdeploy=mmdeploy.__version__, onnxruntime=onnxruntime.__version__,
                onnx=onnx.__version__)


def report_markdown(report: Dict[str, Any]) -> str:
    v = report['versions']
    lines = [f"mmdeploy {v['mmdeploy']} -> ONNX Runtime {v['onnxruntime']} (CPU) vs PyTorch "
             f"{v['torch']} (mmdet {v['mmdet']}), folded model, same test split",
             '', '| | ' + ' | '.join(AP_KEYS) + ' |', '|---|' + '---|' * len(AP_KEYS)]
    for name in ('torch', 'ort', 'ap_diff'):
        if name in report:
            label = {'torch': 'PyTorch', 'ort': 'ONNX Runtime', 'ap_diff': 'ORT - PyTorch'}[name]
            fmt = '{:+.4f}' if name == 'ap_diff' else '{:.4f}'
            lines.append(f'| {label} | ' + ' | '.join(
                fmt.format(report[name][k]) if k in report[name] else '-' for k in AP_KEYS)
                + ' |')
    if 'detections' in report:
        d = report['detections']
        lines += ['', f"detections: {d['detections']} (ORT) vs {d['detections_ref']} "
                  f"(PyTorch); of the top-{d['top_k']} PyTorch detections per image, "
                  f"{100 * d['matched_within_0_5px']:.1f}% have an ORT detection of the same "
                  f"label, score within {d['score_tol']:g} and box within 0.5 px"]
    c = report.get('conversion')
    if c:
        lines.append(f"conversion check (ORT vs the same mmdeploy-rewritten model in PyTorch, "
                     f"{c['images']} test images, {c['detections']} detections): max abs "
                     f"difference "
                     + ', '.join(f'{k} {v:.2e}' for k, v in c['max_abs_diff'].items())
                     + ('' if c['same_shapes'] else ' (DIFFERENT SHAPES)'))
    if report.get('fold_relative_error') is not None:
        lines.append(f"fold relative error (float64): {report['fold_relative_error']:.2e}")
    lines.append('seconds: ' + ', '.join(f'{k} {s:.1f}' for k, s in report['seconds'].items()))
    return '\n'.join(lines)
