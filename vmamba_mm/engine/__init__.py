"""Training engine parts: a divergence guard, crash-safe checkpoints, exact resume.

Importing it registers :class:`SafeRunner` in mmengine's RUNNERS and the hooks
in mmengine's HOOKS, which the mmdet / mmseg / mmpretrain registries inherit.
"""
from .hooks import DivergenceError, DivergenceGuardHook, SafeCheckpointHook
from .safe_runner import DatasetError, SafeRunner

__all__ = ['DatasetError', 'DivergenceError', 'DivergenceGuardHook', 'SafeCheckpointHook', 'SafeRunner']
