"""Hooks that inject faults into end-to-end training runs of the tests
(imported by test configs through ``custom_imports``)."""
import os
import signal

import torch
from mmengine.hooks import Hook
from mmengine.registry import HOOKS


@HOOKS.register_module()
class KillAfterCheckpointHook(Hook):
    """SIGKILL this process right after the checkpoint of epoch ``epoch`` is written."""

    priority = 'LOWEST'  # after the checkpoint hook (VERY_LOW)

    def __init__(self, epoch):
        self.epoch = epoch

    def after_train_epoch(self, runner):
        if runner.epoch + 1 == self.epoch:
            os.kill(os.getpid(), signal.SIGKILL)


@HOOKS.register_module()
class PoisonWeightsHook(Hook):
    """Set every weight to NaN before iteration ``iter`` (1-based) or, with
    ``after_epoch``, after that epoch's last iteration (before its checkpoint)."""

    priority = 'NORMAL'

    def __init__(self, iter=None, after_epoch=None):
        self.iter, self.after_epoch = iter, after_epoch

    @staticmethod
    def _poison(runner):
        model = getattr(runner.model, 'module', runner.model)
        with torch.no_grad():
            for p in model.parameters():
                p.fill_(float('nan'))

    def before_train_iter(self, runner, batch_idx, data_batch=None):
        if self.iter is not None and runner.iter + 1 == self.iter:
            self._poison(runner)

    def after_train_epoch(self, runner):
        if self.after_epoch is not None and runner.epoch + 1 == self.after_epoch:
            self._poison(runner)
