"""The machine a benchmark runs on: its dense GEMM rate (the yardstick of the achieved
GFLOP/s, measured in the same run) and its description (versions, CPU / GPU, TF32)."""
import os
import platform
import statistics
from typing import Any, Dict

import torch

from mmslab.timing import cpu_name, sync, time_calls


def gemm_size(device: torch.device, half: bool = False, mini: bool = False) -> int:
    """The GEMM's side: 4096 on CUDA; 2048 on the CPU (512 for a half-precision GEMM,
    which may be slow there without native support); 256 for the ``--mini`` smoke runs,
    whose yardstick is only looked at, not compared (a 2048^3 GEMM takes 0.2 s of a core:
    a second per probe, and a run probes after every case)."""
    if mini:
        return 256
    if device.type == 'cuda':
        return 4096
    return 512 if half else 2048


def gemm_gflops(n: int = 2048, repeat: int = 5, device: Any = 'cpu',
                dtype: torch.dtype = torch.float32) -> float:
    """Dense GEMM rate of this process (median of ``repeat`` ``n^3`` matmuls)."""
    device = torch.device(device)
    a = torch.randn(n, n, device=device).to(dtype)
    b = torch.randn(n, n, device=device).to(dtype)
    torch.mm(a, b)
    sync(device)
    times = [time_calls(lambda: torch.mm(a, b), 1, device) for _ in range(repeat)]
    return 2 * n ** 3 / statistics.median(times) / 1e9


def environment(device: torch.device, mini: bool = False) -> Dict[str, str]:
    """Versions, processor and (CUDA) GPU, TF32 and cuDNN settings."""
    env = dict(torch=torch.__version__, python=platform.python_version(),
               cpu=cpu_name(), cores=str(os.cpu_count()), device=str(device),
               gemm_n=str(gemm_size(device, mini=mini)),
               gemm_amp_n=str(gemm_size(device, half=True, mini=mini)))
    if device.type == 'cuda':
        env.update(gpu=torch.cuda.get_device_name(device), cuda=str(torch.version.cuda),
                   cudnn=str(torch.backends.cudnn.version()),
                   matmul_tf32=str(torch.backends.cuda.matmul.allow_tf32),
                   cudnn_tf32=str(torch.backends.cudnn.allow_tf32),
                   cudnn_benchmark=str(torch.backends.cudnn.benchmark))
    return env
