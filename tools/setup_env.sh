#!/usr/bin/env bash
# Idempotent set-up of mmslab's environment in .venv/ at the repository root.
#
#   bash tools/setup_env.sh
#
# Installs torch 2.5.1 (see README: newer torch breaks mmengine 0.10.7 and mmcv 2.1.0),
# mmcv 2.1.0 with compiled ops (built once from the PyPI sdist, ~25 min on 2 cores, and
# cached as a wheel in $MMSLAB_CACHE, default ~/.cache/mmslab), then mmengine, mmdet,
# mmsegmentation, timm, openmim, pytest and mmslab itself (editable), then checks that
# mmcv's ops run on CPU and that `mim` works.
#
# MMSLAB_EXTRAS: comma-separated optional extras of pyproject.toml to install besides
# `tests`, e.g. `MMSLAB_EXTRAS=deploy` (ONNX Runtime + mmdeploy, what `make test` asks
# for; `make demo` does not). The stamp records the extras, so asking for one that is not
# installed yet runs the set-up again.
set -euo pipefail

ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
VENV="$ROOT/.venv"
PY="$VENV/bin/python"
CACHE="${MMSLAB_CACHE:-$HOME/.cache/mmslab}"
TORCH_VERSION=2.5.1
TORCHVISION_VERSION=0.20.1
MMCV_VERSION=2.1.0
STAMP="$VENV/.mmslab-setup-done"
REQUESTED="${MMSLAB_EXTRAS:-}"
EXTRAS="$(printf '%s\n' tests ${REQUESTED//,/ } | sort -u | paste -sd, -)"
log() { printf '[setup_env] %s\n' "$*"; }

PYTHON="${PYTHON:-python3}"
if [ ! -x "$PY" ]; then
  log "creating virtualenv $VENV with $($PYTHON --version)"
  "$PYTHON" -m venv "$VENV"
fi
pip_install() { "$PY" -m pip install --disable-pip-version-check -q "$@"; }

# A stamp newer than every install input, listing every extra asked for, means there is
# nothing to do.
stamp_has_extras() {
  local e
  for e in ${EXTRAS//,/ }; do grep -qx "extra=$e" "$STAMP" || return 1; done
}
if [ -f "$STAMP" ] && [ "$STAMP" -nt "$ROOT/pyproject.toml" ] && [ "$STAMP" -nt "$0" ] \
    && stamp_has_extras; then
  log "environment up to date ($VENV, extras $EXTRAS)"
  exit 0
fi

# setuptools<81: mmengine 0.10.7 and mim import pkg_resources, which setuptools 81 removed.
pip_install --upgrade pip "setuptools<81" wheel ninja
log "installing torch==$TORCH_VERSION torchvision==$TORCHVISION_VERSION"
pip_install "torch==$TORCH_VERSION" "torchvision==$TORCHVISION_VERSION"

# mmcv with ops: there is no wheel for torch 2.5.1 on PyPI, so build one from the sdist
# once and keep it outside the repository (a fresh clone reuses it in seconds).
PYTAG="$("$PY" -c 'import sys; print(f"cp{sys.version_info[0]}{sys.version_info[1]}")')"
WHEELS="$CACHE/wheels/torch$TORCH_VERSION-$PYTAG"
mkdir -p "$WHEELS"
MMCV_WHEEL="$(ls "$WHEELS"/mmcv-"$MMCV_VERSION"-*.whl 2>/dev/null | head -n 1 || true)"
if [ -z "$MMCV_WHEEL" ]; then
  log "building mmcv==$MMCV_VERSION with ops from source: this takes ~25 minutes on 2 cores,"
  log "once; the wheel is cached in $WHEELS (build log: $WHEELS/build.log)"
  start=$(date +%s)
  # --no-build-isolation: isolation would hide torch and bring a setuptools without
  # pkg_resources. The build reads torch from this venv.
  pip_install "packaging" "addict" "pyyaml" "yapf" "numpy" "opencv-python" "Pillow"
  if ! MMCV_WITH_OPS=1 FORCE_CUDA=0 MAX_JOBS="${MAX_JOBS:-2}" "$PY" -m pip wheel \
        --disable-pip-version-check --no-deps --no-build-isolation --no-binary mmcv \
        -w "$WHEELS" "mmcv==$MMCV_VERSION" >"$WHEELS/build.log" 2>&1; then
    tail -n 40 "$WHEELS/build.log"
    log "mmcv build FAILED; full log in $WHEELS/build.log"
    exit 1
  fi
  log "mmcv built in $(( $(date +%s) - start )) s"
  MMCV_WHEEL="$(ls "$WHEELS"/mmcv-"$MMCV_VERSION"-*.whl | head -n 1)"
else
  log "using cached mmcv wheel $MMCV_WHEEL"
fi
pip_install "$MMCV_WHEEL"

log "installing mmslab (editable) with mmengine, mmdet, mmsegmentation, timm, openmim" \
  "and the extras $EXTRAS"
pip_install -e "$ROOT[$EXTRAS]"

log "self-check: mmcv ops on CPU, mim"
"$PY" - <<'PY'
import torch
from mmcv.ops import RoIAlign, nms
boxes = torch.tensor([[0., 0., 10., 10.], [1., 1., 11., 11.], [50., 50., 60., 60.]])
scores = torch.tensor([0.9, 0.8, 0.7])
_, keep = nms(boxes, scores, iou_threshold=0.5)
assert keep.tolist() == [0, 2], keep
feat = torch.arange(64, dtype=torch.float32).view(1, 1, 8, 8)
rois = torch.tensor([[0., 0., 0., 4., 4.]])
out = RoIAlign((2, 2), spatial_scale=1.0, sampling_ratio=2)(feat, rois)
assert out.shape == (1, 1, 2, 2) and torch.isfinite(out).all()
import mmcv, mmdet, mmengine, mmseg, mmslab
print(f'torch {torch.__version__}  mmcv {mmcv.__version__}  mmengine {mmengine.__version__}  '
      f'mmdet {mmdet.__version__}  mmseg {mmseg.__version__}  mmslab {mmslab.__version__}')
PY
"$PY" -m mim --version >/dev/null || { log "mim does not run"; exit 1; }
if [[ ",$EXTRAS," == *,deploy,* ]]; then
  log "self-check (deploy): onnxruntime runs mmdeploy's custom-op library"
  "$PY" - <<'PY'
import ctypes
import numpy as np
import onnx
import onnxruntime as ort
from onnx import TensorProto, helper
import mmdeploy
from mmdeploy.backend.onnxruntime.init_plugins import get_lib_path, get_ops_path
ctypes.CDLL(get_lib_path())  # as mmdeploy's ORTWrapper does
node = helper.make_node('grid_sampler', ['x', 'grid'], ['y'], domain='mmdeploy',
                        interpolation_mode=0, padding_mode=0, align_corners=1)
info = lambda n: helper.make_tensor_value_info(n, TensorProto.FLOAT, None)  # noqa: E731
graph = helper.make_graph([node], 'g', [info('x'), info('grid')], [info('y')])
model = helper.make_model(graph, opset_imports=[helper.make_opsetid('', 17),
                                                helper.make_opsetid('mmdeploy', 1)])
opts = ort.SessionOptions()
opts.register_custom_ops_library(get_ops_path())
sess = ort.InferenceSession(model.SerializeToString(), opts, providers=['CPUExecutionProvider'])
x = np.arange(4, dtype=np.float32).reshape(1, 1, 2, 2)
grid = np.array([[[[-1, -1], [1, 1]]]], dtype=np.float32)  # corners (align_corners=1)
y = sess.run(None, {'x': x, 'grid': grid})[0]
assert np.allclose(y.ravel(), [0, 3]), y
print(f'onnxruntime {ort.__version__}  onnx {onnx.__version__}  mmdeploy {mmdeploy.__version__}'
      ' (custom ops run)')
PY
fi
printf 'extra=%s\n' ${EXTRAS//,/ } >"$STAMP"
log "environment ready: $VENV"
