#!/usr/bin/env bash
# Idempotent set-up of one of mmslab's two tested stacks in a virtualenv of the repository.
#
#   bash tools/setup_env.sh                        # the default stack, 'current', in .venv/
#   MMSLAB_STACK=classic bash tools/setup_env.sh   # the 2024 upstream stack, in .venv-classic/
#
# MMSLAB_STACK   'current' (default) or 'classic'; the exact versions of each are the
#                constraint file requirements/<stack>.txt (README, "Install").
# MMSLAB_VENV    the virtualenv (default .venv for current, .venv-classic for classic).
# MMSLAB_EXTRAS  comma-separated optional extras of pyproject.toml besides `tests`, e.g.
#                `deploy` (ONNX Runtime + mmdeploy: what `make test` asks for).
# MMSLAB_CACHE   where the mmcv wheel built here is kept (default ~/.cache/mmslab).
#
# mmcv 2.1.0 has no wheel for these torch versions on PyPI, so its ops are built once from
# the PyPI sdist and the wheel is cached outside the repository; every later run, and
# every fresh clone on this machine, reuses it. The build takes 7-9 min on 2 idle cores of
# a slow host (AMD EPYC, ~130 fp32 GFLOP/s: 426 s classic, 516 s current), less on a
# faster one, several times that on a loaded machine; the script prints the time it took
# (docs/stacks.md). For torch >= 2.10 the build raises mmcv's `-std=c++17` to
# `-std=c++20` (torch's headers need C++20): the one patch this script applies to a
# package. Then torch/torchvision, mmengine, mmdet, mmseg and mmslab itself (editable) are
# installed under the stack's constraints, and mmcv's ops and `mim` are checked to run.
set -euo pipefail

ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
STACK="${MMSLAB_STACK:-current}"
case "$STACK" in
  current) DEFAULT_VENV="$ROOT/.venv" ;;
  classic) DEFAULT_VENV="$ROOT/.venv-classic" ;;
  *) echo "[setup_env] MMSLAB_STACK must be 'current' or 'classic', got '$STACK'" >&2; exit 2 ;;
esac
VENV="${MMSLAB_VENV:-$DEFAULT_VENV}"
case "$VENV" in /*) ;; *) VENV="$ROOT/$VENV" ;; esac
PY="$VENV/bin/python"
CONSTRAINTS="$ROOT/requirements/$STACK.txt"
CACHE="${MMSLAB_CACHE:-$HOME/.cache/mmslab}"
STAMP="$VENV/.mmslab-setup-done"
REQUESTED="${MMSLAB_EXTRAS:-}"
EXTRAS="$(printf '%s\n' tests ${REQUESTED//,/ } | sort -u | paste -sd, -)"
log() { printf '[setup_env:%s] %s\n' "$STACK" "$*"; }
pinned() {  # the version requirements/<stack>.txt pins for package $1
  sed -n "s/^$1==\([^ ;#]*\).*/\1/p" "$CONSTRAINTS" | head -n 1
}
TORCH_VERSION="$(pinned torch)"
MMCV_VERSION="$(pinned mmcv)"
[ -n "$TORCH_VERSION" ] && [ -n "$MMCV_VERSION" ] || {
  log "$CONSTRAINTS pins no torch / mmcv version"; exit 2; }

PYTHON="${PYTHON:-python3}"
if [ ! -x "$PY" ]; then
  log "creating virtualenv $VENV with $($PYTHON --version)"
  "$PYTHON" -m venv "$VENV"
fi
pip_install() { "$PY" -m pip install --disable-pip-version-check -q -c "$CONSTRAINTS" "$@"; }

# A stamp newer than every install input, for this stack, listing every extra asked for,
# means there is nothing to do.
stamp_ok() {
  local e
  [ -f "$STAMP" ] && grep -qx "stack=$STACK" "$STAMP" || return 1
  for f in "$ROOT/pyproject.toml" "$CONSTRAINTS" "$0"; do [ "$STAMP" -nt "$f" ] || return 1; done
  for e in ${EXTRAS//,/ }; do grep -qx "extra=$e" "$STAMP" || return 1; done
}
if stamp_ok; then
  log "environment up to date ($VENV, extras $EXTRAS)"
  exit 0
fi

# setuptools<81: mmengine 0.10.7 and mim import pkg_resources, which setuptools 81 removed.
pip_install --upgrade pip setuptools wheel ninja
log "installing torch==$TORCH_VERSION and torchvision (requirements/$STACK.txt)"
pip_install torch torchvision

# mmcv with ops, built once per torch version and Python, kept outside the repository.
PYTAG="$("$PY" -c 'import sys; print(f"cp{sys.version_info[0]}{sys.version_info[1]}")')"
WHEELS="$CACHE/wheels/torch$TORCH_VERSION-$PYTAG"
mkdir -p "$WHEELS"
MMCV_WHEEL="$(ls "$WHEELS"/mmcv-"$MMCV_VERSION"-*.whl 2>/dev/null | head -n 1 || true)"
if [ -z "$MMCV_WHEEL" ]; then
  log "building mmcv==$MMCV_VERSION with ops against torch $TORCH_VERSION, once: 7-9 minutes"
  log "on 2 idle cores of a slow host (longer on a loaded machine); the wheel is cached in $WHEELS"
  log "(build log: $WHEELS/build.log)"
  start=$(date +%s)
  # --no-build-isolation: the build reads torch from this venv (isolation would hide it).
  pip_install packaging addict pyyaml yapf numpy opencv-python Pillow
  SRC="$(mktemp -d)"
  trap 'rm -rf "$SRC"' EXIT
  "$PY" -m pip download --disable-pip-version-check -q --no-deps --no-build-isolation \
    --no-binary mmcv -d "$SRC" "mmcv==$MMCV_VERSION" >"$WHEELS/build.log" 2>&1
  tar -xzf "$SRC/mmcv-$MMCV_VERSION.tar.gz" -C "$SRC"
  if "$PY" -c "import sys, torch; from packaging.version import Version as V
sys.exit(0 if V(torch.__version__.split('+')[0]) >= V('2.10') else 1)"; then
    log "torch >= 2.10: building with -std=c++20 instead of mmcv's -std=c++17"
    sed -i 's/-std=c++17/-std=c++20/g; s#/std:c++17#/std:c++20#g' "$SRC/mmcv-$MMCV_VERSION/setup.py"
  fi
  # Python's own compile flags (-O3 ...) without their -g: debug information in the ops
  # library only costs compile time and disk. (CFLAGS / CXXFLAGS replace Python's flags.)
  PYFLAGS="$("$PY" -c 'import sysconfig; print(sysconfig.get_config_var("CFLAGS"))') -g0"
  if ! CFLAGS="$PYFLAGS ${CFLAGS:-}" CXXFLAGS="$PYFLAGS ${CXXFLAGS:-}" \
        MMCV_WITH_OPS=1 FORCE_CUDA=0 MAX_JOBS="${MAX_JOBS:-2}" "$PY" -m pip wheel \
        --disable-pip-version-check --no-deps --no-build-isolation -w "$WHEELS" \
        "$SRC/mmcv-$MMCV_VERSION" >>"$WHEELS/build.log" 2>&1; then
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

log "installing mmslab (editable) with mmengine, mmdet, mmsegmentation, openmim" \
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
  "$PY" "$ROOT/tools/check_deploy_env.py"
fi
{ echo "stack=$STACK"; printf 'extra=%s\n' ${EXTRAS//,/ }; } >"$STAMP"
log "environment ready: $VENV"
