from .prepbn_hook import PRepBNHook
from .release_checkpoint import ReleaseCheckpointHook

__all__ = ['PRepBNHook', 'ReleaseCheckpointHook']
