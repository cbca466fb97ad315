"""Test helper: a 'trained' state of every RepBN of a model (random BatchNorm statistics
and identity weights alpha), so that every term of the fold matters."""
import torch
import torch.nn as nn

from mmslab.prepbn import RepBN


@torch.no_grad()
def randomize_repbn(model: nn.Module, mean_std: float = 0.5) -> nn.Module:
    """Running means ~ N(0, mean_std), running variances ~ U(0.5, 2), alphas ~ U(0.5, 1.5)
    for every RepBN of ``model`` (drawn in module order from torch's global generator)."""
    for m in model.modules():
        if isinstance(m, RepBN):
            m.bn.running_mean.normal_(0, mean_std)
            m.bn.running_var.uniform_(0.5, 2.0)
            m.alpha.uniform_(0.5, 1.5)
    return model
