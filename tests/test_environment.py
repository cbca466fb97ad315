"""The tested OpenMMLab stack works: its exact versions, mmcv ops on CPU, stock mmdet /
mmseg configs build and run, mim runs, and mmslab registers into mmengine's root
registries."""
import re
import subprocess
import sys
from pathlib import Path

import torch
from mmengine.hub import get_config

REQUIREMENTS = Path(__file__).resolve().parents[1] / 'requirements'
CORE = ('torch', 'torchvision', 'mmcv', 'mmengine', 'mmdet', 'mmsegmentation')


def _pins(stack: str) -> dict:
    text = (REQUIREMENTS / f'{stack}.txt').read_text()
    return dict(re.findall(r'^([A-Za-z0-9_.-]+)==([^\s;#]+)', text, re.M))


def _installed(name: str) -> str:
    from importlib.metadata import version
    return version(name).split('+')[0]


def test_core_versions_are_one_tested_stack():
    """The venv holds exactly the core versions of the stack its set-up recorded (or, in an
    environment set up otherwise, of one of the two tested stacks)."""
    stamp = Path(sys.prefix) / '.mmslab-setup-done'
    stacks = ['current', 'classic']
    if stamp.is_file():
        stacks = re.findall(r'^stack=(\w+)$', stamp.read_text(), re.M)
        assert stacks, f'{stamp} names no stack'
    installed = {name: _installed(name) for name in CORE}
    wanted = [{name: _pins(stack)[name] for name in CORE} for stack in stacks]
    assert installed in wanted, f'installed {installed}, tested stacks {dict(zip(stacks, wanted))}'


def test_mmcv_ops_run_on_cpu():
    from mmcv.ops import RoIAlign, nms
    boxes = torch.tensor([[0., 0., 10., 10.], [1., 1., 11., 11.], [50., 50., 60., 60.]])
    dets, keep = nms(boxes, torch.tensor([0.9, 0.8, 0.7]), iou_threshold=0.5)
    assert keep.tolist() == [0, 2]
    feat = torch.arange(64, dtype=torch.float32).view(1, 1, 8, 8)
    out = RoIAlign((2, 2), spatial_scale=1.0, sampling_ratio=2)(
        feat, torch.tensor([[0., 0., 0., 4., 4.]]))
    # aligned=True shifts the box by -0.5 px: bins average the ramp 8*y+x at y,x in {0,1}
    # (bin 0,0), {0,1}x{2,3} (bin 0,1), ... -> exact values
    torch.testing.assert_close(out.flatten(), torch.tensor([4.5, 6.5, 20.5, 22.5]))


def test_mim_runs():
    out = subprocess.run([sys.executable, '-m', 'mim', '--version'], capture_output=True,
                         text=True, check=True)
    assert out.stdout.strip()


def test_stock_mask_rcnn_builds_and_predicts():
    from mmdet.registry import MODELS
    from mmdet.structures import DetDataSample
    from mmdet.utils import register_all_modules
    register_all_modules()
    cfg = get_config('mmdet::mask_rcnn/mask-rcnn_r50_fpn_1x_coco.py')
    cfg.model.backbone.init_cfg = None
    model = MODELS.build(cfg.model).eval()
    img = torch.randint(0, 255, (3, 128, 160), dtype=torch.uint8)
    sample = DetDataSample(metainfo=dict(img_shape=(128, 160), ori_shape=(128, 160),
                                         scale_factor=(1.0, 1.0)))
    with torch.no_grad():
        data = model.data_preprocessor({'inputs': [img], 'data_samples': [sample]}, False)
        feats = model.extract_feat(data['inputs'])
        result = model(**data, mode='predict')[0]
    assert [f.shape[1] for f in feats] == [256] * 5
    assert hasattr(result.pred_instances, 'masks')


def test_stock_upernet_builds():
    from mmseg.registry import MODELS
    from mmseg.utils import register_all_modules
    register_all_modules()
    cfg = get_config(
        'mmseg::swin/swin-tiny-patch4-window7-in1k-pre_upernet_8xb2-160k_ade20k-512x512.py')
    cfg.model.backbone.init_cfg = None
    cfg.model.pretrained = None
    model = MODELS.build(cfg.model).eval()
    with torch.no_grad():
        logits = model(torch.randn(1, 3, 64, 64), mode='tensor')
    assert logits.shape[:2] == (1, 150)


def test_mmslab_registers_into_root_registries():
    import mmslab  # noqa: F401
    from mmdet.registry import MODELS as DET_MODELS
    from mmengine.registry import HOOKS, MODELS
    from mmseg.registry import MODELS as SEG_MODELS
    for name in ('SLABPVT', 'SLABSwin'):
        assert MODELS.get(name) is not None
        assert DET_MODELS.get(name) is MODELS.get(name)  # children fall back to the root
        assert SEG_MODELS.get(name) is MODELS.get(name)
    assert HOOKS.get('PRepBNHook') is not None
