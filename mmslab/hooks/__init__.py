from .prepbn_hook import PRepBNHook

__all__ = ['PRepBNHook']
