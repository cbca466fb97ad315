#!/usr/bin/env bash
# The CPU demo (run after tools/setup_env.sh):
#
#   bash tools/run_demo.sh            # detection demo (~5 min training on 2 cores)
#   DEMO_SEG=1 bash tools/run_demo.sh # also the UperNet segmentation demo
#
# 1. writes the synthetic shapes sets (tools/make_demo_data.py -> data/demo_coco/,
#    data/demo_ade/),
# 2. trains Mask R-CNN + SLAB-PVT from scratch with `mim train mmdet
#    configs/demo/mask_rcnn_slab_pvt_demo.py`,
# 3. evaluates the last checkpoint with `mim test mmdet ... --show-dir`: COCO bbox +
#    segm AP (CocoMetric) on the synthetic val split, and every val image drawn (ground
#    truth | prediction) as a PNG by mmdet's DetLocalVisualizer,
# 4. prints the AP, the wall times and where the pictures are.
#
# Environment: DEMO_WORK_DIR (default work_dirs/demo), DEMO_SEG=1 (segmentation demo
# too, in $DEMO_WORK_DIR/seg), PYTHON (default .venv/bin/python).
set -euo pipefail

ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
cd "$ROOT"
PY="${PYTHON:-$ROOT/.venv/bin/python}"
WORK="${DEMO_WORK_DIR:-work_dirs/demo}"
DET_CFG=configs/demo/mask_rcnn_slab_pvt_demo.py
SEG_CFG=configs/demo/upernet_slab_swin_demo.py
log() { printf '\n[run_demo] %s\n' "$*"; }

log "1/4 synthetic data"
"$PY" tools/make_demo_data.py --only coco
if [ "${DEMO_SEG:-0}" = 1 ]; then "$PY" tools/make_demo_data.py --only ade; fi

log "2/4 training $DET_CFG (from scratch, CPU)"
rm -rf "$WORK"
t0=$(date +%s)
"$PY" -m mim train mmdet "$DET_CFG" --work-dir "$WORK"
t1=$(date +%s)
CKPT="$(cat "$WORK/last_checkpoint")"

log "3/4 testing $CKPT (COCO bbox + segm)"
"$PY" -m mim test mmdet "$DET_CFG" --checkpoint "$CKPT" --work-dir "$WORK/test" \
  --show-dir vis
t2=$(date +%s)

log "4/4 summary"
"$PY" - "$WORK" "$((t1 - t0))" "$((t2 - t1))" <<'PY'
import glob, json, os.path as osp, sys
import cv2
import numpy as np

work, train_s, test_s = sys.argv[1], int(sys.argv[2]), int(sys.argv[3])
runs = sorted(glob.glob(osp.join(work, 'test', '2*')))
run = runs[-1]
metrics = json.load(open(osp.join(run, osp.basename(run) + '.json')))
vis_dir = osp.join(run, 'vis')
pngs = sorted(glob.glob(osp.join(vis_dir, '*.png')))
# one overview picture: the first 6 drawn val images (ground truth | prediction)
tiles = [cv2.imread(p) for p in pngs[:6]]
grid_file = osp.join(work, 'predictions_grid.png')
if tiles:
    rows = [np.concatenate(tiles[i:i + 2], axis=1) for i in range(0, len(tiles) - 1, 2)]
    cv2.imwrite(grid_file, np.concatenate(rows, axis=0))
print('Mask R-CNN + SLAB-PVT (demo, from scratch) on the synthetic val split:')
for task in ('bbox', 'segm'):
    ks = ['mAP', 'mAP_50', 'mAP_75', 'mAP_s', 'mAP_m', 'mAP_l']
    vals = '  '.join(f'{k}={metrics[f"coco/{task}_{k}"]:.3f}' for k in ks)
    print(f'  {task:4s}  {vals}')
print(f'  training wall time {train_s} s, test {test_s} s')
bbox = metrics['coco/bbox_mAP']
print(f'  target box AP >= 0.5: {"reached" if bbox >= 0.5 else "NOT reached"} '
      f'({bbox:.3f})')
print(f'  {len(pngs)} drawn val images (ground truth | prediction): {vis_dir}/')
if tiles:
    print(f'  overview of the first {len(tiles)}: {grid_file}')
PY

if [ "${DEMO_SEG:-0}" = 1 ]; then
  log "segmentation demo: training $SEG_CFG (from scratch, CPU)"
  t3=$(date +%s)
  "$PY" -m mim train mmsegmentation "$SEG_CFG" --work-dir "$WORK/seg"
  t4=$(date +%s)
  "$PY" -m mim test mmsegmentation "$SEG_CFG" \
    --checkpoint "$(cat "$WORK/seg/last_checkpoint")" --work-dir "$WORK/seg/test" \
    --show-dir "$WORK/seg/vis"
  log "segmentation demo: training wall time $((t4 - t3)) s; drawn val images" \
    "(ground truth | prediction) under $WORK/seg/vis/"
fi
