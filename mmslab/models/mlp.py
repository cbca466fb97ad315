"""The blocks' MLP: ``fc1 -> GELU -> dropout -> fc2 -> dropout`` on channels-last tokens.

The release builds it with timm's ``Mlp`` and its defaults; this is that module with the
same submodule names (``fc1``, ``act``, ``drop1``, ``norm``, ``fc2``, ``drop2``; the
parameters ``fc1.*`` / ``fc2.*``), so checkpoints and the CPU inference path see the same
layers. It is defined here because importing timm imports its whole model zoo (1.5 s of
every process that imports mmslab, on 2 cores); stochastic depth is mmcv's ``DropPath``.
"""
import torch
import torch.nn as nn


class Mlp(nn.Module):

    def __init__(self, in_features: int, hidden_features: int, drop: float = 0.) -> None:
        super().__init__()
        self.fc1 = nn.Linear(in_features, hidden_features)
        self.act = nn.GELU()
        self.drop1 = nn.Dropout(drop)
        self.norm = nn.Identity()
        self.fc2 = nn.Linear(hidden_features, in_features)
        self.drop2 = nn.Dropout(drop)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.drop2(self.fc2(self.norm(self.drop1(self.act(self.fc1(x))))))
