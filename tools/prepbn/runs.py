"""The study's runs, each a fresh process through a public entry point: training (and the
validation at its end) with mmdet's ``tools/train.py``; BN recalibration with
``tools/recalibrate_bn.py`` and its test with mmdet's ``tools/test.py``. (Those are the
commands `mim train mmdet` / `mim test mmdet` start; run directly, each run spares the
interpreters of `mim` and of the ``train.py -h`` it runs first, ~6 s of a core.) A
finished run keeps its result in ``<work_dir>/runs/<variant>_s<seed>[/recal<N>]/
result.json``; a rerun returns it (``force`` redoes it), so an interrupted study resumes
where it stopped."""
import glob
import importlib.util
import json
import math
import os
import os.path as osp
import subprocess
import sys
import time
from typing import List, Optional, Sequence

from mmslab.fileio import atomic_write_text

from .config import write_config

TOOLS = osp.dirname(osp.dirname(osp.abspath(__file__)))
REPO = osp.dirname(TOOLS)


def codebase_script(package: str, name: str) -> str:
    """An OpenMMLab codebase's ``tools/<name>.py`` as `mim` finds it (``<package>/.mim/
    tools``, else ``<package>/tools``)."""
    pkg = importlib.util.find_spec(package).submodule_search_locations[0]
    script = osp.join(pkg, '.mim', 'tools', f'{name}.py')
    return script if osp.isfile(script) else osp.join(pkg, 'tools', f'{name}.py')


def run_logged(cmd: Sequence[str], log_file: str, threads: int) -> float:
    """Run ``cmd`` (in the repository, ``threads`` OpenMP / MKL threads), its output to
    ``log_file``; the wall time. A failure raises with the end of the log."""
    env = dict(os.environ, OMP_NUM_THREADS=str(threads), MKL_NUM_THREADS=str(threads))
    start = time.time()
    with open(log_file, 'w') as f:
        proc = subprocess.run(list(cmd), cwd=REPO, stdout=f, stderr=subprocess.STDOUT,
                              env=env)
    if proc.returncode:
        with open(log_file) as f:
            tail = ''.join(f.readlines()[-40:])
        raise RuntimeError(f'`{" ".join(cmd)}` failed ({proc.returncode}); end of '
                           f'{log_file}:\n{tail}')
    return time.time() - start


def _last_run(work_dir: str, sub: str) -> str:
    """The json file of the last mmengine run under ``work_dir``
    (``<timestamp>/<sub>/<timestamp>.json``)."""
    runs = sorted(d for d in os.listdir(work_dir)
                  if osp.isfile(osp.join(work_dir, d, sub, d + '.json')))
    if not runs:
        raise RuntimeError(f'no mmengine run with a json log in {work_dir}')
    return osp.join(work_dir, runs[-1], sub, runs[-1] + '.json')


def json_log(work_dir: str) -> List[dict]:
    """The scalar records (one a line) of the last mmengine run under ``work_dir``."""
    with open(_last_run(work_dir, 'vis_data')) as f:
        return [json.loads(line) for line in f if line.strip()]


def test_metrics(work_dir: str) -> dict:
    """The metrics of the last test run under ``work_dir``."""
    with open(_last_run(work_dir, '')) as f:
        return json.load(f)


def _done(result_file: str, force: bool) -> Optional[dict]:
    if osp.isfile(result_file) and not force:
        with open(result_file) as f:
            return json.load(f)
    return None


def train_one(work_root: str, base_config: str, variant: str, seed: int, data_root: str,
              image_size: int, iters: int, batch_size: int, threads: int,
              force: bool = False) -> dict:
    """Train (and validate at the end) one variant / seed; its result."""
    run_dir = osp.join(work_root, 'runs', f'{variant}_s{seed}')
    result_file = osp.join(run_dir, 'result.json')
    done = _done(result_file, force)
    if done is not None:
        return done
    os.makedirs(run_dir, exist_ok=True)
    cfg = write_config(osp.join(run_dir, 'config.py'), base_config, variant, seed, data_root,
                       image_size, iters, batch_size)
    work_dir = osp.join(run_dir, 'work')
    wall = run_logged([sys.executable, codebase_script('mmdet', 'train'), cfg, '--work-dir',
                       work_dir, '--launcher', 'none'], osp.join(run_dir, 'train.log'), threads)
    records = json_log(work_dir)
    train = [r for r in records if 'loss' in r]
    val = [r for r in records if 'coco/bbox_mAP' in r]
    if not val:
        raise RuntimeError(f'{variant} seed {seed}: no validation record in {work_dir}')
    times = [r['time'] for r in train[1:]] or [r['time'] for r in train]
    with open(osp.join(work_dir, 'last_checkpoint')) as f:
        ckpt = f.read().strip()
    result = dict(
        variant=variant, seed=seed, config=cfg, checkpoint=ckpt, wall_s=round(wall, 1),
        s_per_iter=sum(times) / len(times), bbox_mAP=val[-1]['coco/bbox_mAP'],
        segm_mAP=val[-1]['coco/segm_mAP'], final_lam=train[-1].get('prepbn_lam'),
        finite_loss=all(math.isfinite(r['loss']) for r in train))
    atomic_write_text(json.dumps(result, indent=1), result_file)
    return result


def recal_one(work_root: str, base: dict, iters: int, threads: int,
              force: bool = False) -> dict:
    """BN-recalibrate the checkpoint of the trained run ``base`` over ``iters`` batches
    (``tools/recalibrate_bn.py``) and test it (mmdet's ``tools/test.py``); its result."""
    run_dir = osp.join(work_root, 'runs', f'{base["variant"]}_s{base["seed"]}',
                       f'recal{iters}')
    result_file = osp.join(run_dir, 'result.json')
    done = _done(result_file, force)
    if done is not None:
        return done
    os.makedirs(run_dir, exist_ok=True)
    recalibrated = osp.join(run_dir, 'recalibrated.pth')
    wall = run_logged([sys.executable, osp.join(TOOLS, 'recalibrate_bn.py'), base['config'],
                       base['checkpoint'], '--iters', str(iters), '--out', recalibrated,
                       '--cfg-options', f'work_dir={osp.join(run_dir, "recal")}'],
                      osp.join(run_dir, 'recal.log'), threads)
    test_dir = osp.join(run_dir, 'test')
    wall += run_logged([sys.executable, codebase_script('mmdet', 'test'), base['config'],
                        recalibrated, '--work-dir', test_dir, '--launcher', 'none'],
                       osp.join(run_dir, 'test.log'), threads)
    metrics = test_metrics(test_dir)
    result = dict(base, variant=f'{base["variant"]}+recal{iters}', recal_iters=iters,
                  wall_s=round(wall, 1), bbox_mAP=metrics['coco/bbox_mAP'],
                  segm_mAP=metrics['coco/segm_mAP'])
    atomic_write_text(json.dumps(result, indent=1), result_file)
    return result


def finished_results(work_root: str, variants: Sequence[str],
                     recal_variants: Sequence[str]) -> List[dict]:
    """The results of every finished run of ``variants`` (any seed; then the BN
    recalibrations of ``recal_variants``) found under ``work_root``, no training."""
    def load(pattern: str) -> List[dict]:
        out = []
        for path in glob.glob(osp.join(work_root, 'runs', pattern, 'result.json')):
            with open(path) as f:
                out.append(json.load(f))
        return sorted(out, key=lambda r: (r.get('recal_iters', 0), r['seed']))

    results = [r for v in variants for r in load(f'{v}_s*')]
    results += [r for v in recal_variants if v in variants
                for r in load(osp.join(f'{v}_s*', 'recal*'))]
    if not results:
        raise RuntimeError(f'no finished run of {list(variants)} under {work_root}/runs')
    return results
