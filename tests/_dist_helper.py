"""Helpers imported (``custom_imports``) by the 2-process run of tests/test_e2e.py.

* ``MMSlabDumpWeightsHook`` saves, on *every* rank, what the test compares across ranks:
  the model's state dict after training, the image ids each iteration trained on, the
  model wrapper type and the number of SyncBatchNorm layers.
* ``init_cpu_process_group()`` runs at import time: mmengine 0.10.7's ``init_dist('pytorch')``
  calls ``torch.cuda.set_device(LOCAL_RANK)`` unconditionally, which raises on a machine
  without CUDA ("Found no NVIDIA driver" / "Torch not compiled with CUDA enabled"). When
  the module is imported by a process started by torchrun (``WORLD_SIZE`` in the
  environment) and CUDA is unavailable, it initialises the default process group itself
  with gloo; the Runner then sees an initialised group and skips ``init_dist``.
  ``Config.fromfile`` imports ``custom_imports`` before the Runner is built, so this
  happens in time.
"""
import os
import os.path as osp

import torch
import torch.distributed as dist
from mmengine.hooks import Hook
from mmengine.model import is_model_wrapper
from mmengine.registry import HOOKS


def init_cpu_process_group() -> bool:
    """Initialise a gloo process group from torchrun's environment on a CPU-only
    machine. Returns True if it did."""
    if 'WORLD_SIZE' not in os.environ or torch.cuda.is_available():
        return False
    if not dist.is_available() or dist.is_initialized():
        return False
    dist.init_process_group(backend='gloo')
    return True


init_cpu_process_group()


@HOOKS.register_module()
class MMSlabDumpWeightsHook(Hook):
    """Save ``<out_dir>/rank<r>.pth`` on every rank at the end of training."""

    priority = 'LOWEST'

    def __init__(self, out_dir: str) -> None:
        self.out_dir = out_dir
        self.img_ids = []

    def after_train_iter(self, runner, batch_idx, data_batch=None, outputs=None) -> None:
        samples = data_batch['data_samples'] if isinstance(data_batch, dict) else []
        self.img_ids.append([int(s.metainfo['img_id']) for s in samples])

    def after_train(self, runner) -> None:
        model = runner.model.module if is_model_wrapper(runner.model) else runner.model
        os.makedirs(self.out_dir, exist_ok=True)
        torch.save(
            dict(
                state_dict={k: v.detach().cpu().clone()
                            for k, v in model.state_dict().items()},
                param_names=[n for n, _ in model.named_parameters()],
                img_ids=self.img_ids,
                rank=runner.rank,
                world_size=runner.world_size,
                wrapper=type(runner.model).__name__,
                backend=dist.get_backend() if dist.is_initialized() else None,
                num_sync_bn=sum(
                    isinstance(m, torch.nn.SyncBatchNorm) for m in model.modules()),
                num_bn=sum(
                    isinstance(m, torch.nn.modules.batchnorm._BatchNorm)
                    for m in model.modules()),
                iter=runner.iter),
            osp.join(self.out_dir, f'rank{runner.rank}.pth'))
