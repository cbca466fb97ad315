"""Acceptance: our backbones, loading the release-format state dicts through their own
``init_cfg`` path, reproduce the conformance vectors made with the release's own code."""
import glob
import json
import os

import pytest
import torch
from _tolerance import EXACT, assert_rel_close, float32_tol

from mmslab.models import SLABPVT, SLABSwin, cpu_inference

VECTORS = os.path.join(os.path.dirname(os.path.abspath(__file__)), 'data', 'reference', 'vectors')
MANIFEST = json.load(open(os.path.join(VECTORS, 'manifest.json')))


def build_mini(name: str) -> torch.nn.Module:
    kw = MANIFEST[name]['kwargs']
    ckpt = dict(type='Pretrained', checkpoint=os.path.join(VECTORS, f'{name}_official.pth'))
    if name == 'slab_pvt_mini':
        model = SLABPVT(embed_dims=kw['embed_dims'], num_heads=kw['num_heads'],
                        mlp_ratios=kw['mlp_ratios'], depths=kw['depths'],
                        attn_types=kw['attn_type'], sr_ratios=kw['sr_ratios'],
                        pretrain_img_size=kw['img_size'], init_cfg=ckpt)
    else:
        model = SLABSwin(embed_dims=kw['embed_dim'], depths=kw['depths'],
                         num_heads=kw['num_heads'], attn_types=kw['attn_type'], init_cfg=ckpt)
    model.init_weights()
    return model.eval()


CASES = [(name, size) for name in MANIFEST if not name.startswith('_')
         for size in MANIFEST[name]['io']]


def test_every_vector_file_is_covered():
    files = {os.path.basename(f) for f in glob.glob(os.path.join(VECTORS, '*_io_*.pt'))}
    assert files == {f'{name}_io_{size}.pt' for name, size in CASES}


DEVICES = ['cpu'] + (['cuda'] if torch.cuda.is_available() else [])


@pytest.mark.parametrize('device', DEVICES)
@pytest.mark.parametrize('name,size', CASES)
# float64: the release's own float64 outputs, to rounding; float32: relative to the largest
# output, rounding through the vectors' models (reductions <= 512 terms, <= 8 blocks)
@pytest.mark.parametrize('dtype,tol', [(torch.float64, EXACT),
                                       (torch.float32, float32_tol(512, layers=8))])
def test_release_vectors(name, size, dtype, tol, device):
    """Both forms of the model (the reference form, and on CPU the inference path), with
    TF32 off (it is on by default for cuDNN convolutions and rounds them to 10 bits)."""
    model = build_mini(name).to(device=device, dtype=dtype)
    io = torch.load(os.path.join(VECTORS, f'{name}_io_{size}.pt'))
    tf32 = torch.backends.cuda.matmul.allow_tf32, torch.backends.cudnn.allow_tf32
    torch.backends.cuda.matmul.allow_tf32 = torch.backends.cudnn.allow_tf32 = False
    try:
        for cpu_path in ([True, False] if device == 'cpu' else [False]):
            with torch.no_grad(), cpu_inference.enabled(cpu_path):
                outs = model(io['input'].to(device=device, dtype=dtype))
            assert len(outs) == len(io['outputs']) == 4
            for out, ref in zip(outs, io['outputs']):
                assert out.dtype == dtype
                assert out.shape == ref.shape
                assert_rel_close(out, ref, tol)
    finally:
        torch.backends.cuda.matmul.allow_tf32, torch.backends.cudnn.allow_tf32 = tf32
