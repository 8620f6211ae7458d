"""Training hooks that stop a diverging run, keep checkpoints safe and keep the
random streams of a resumed run identical to an uninterrupted one."""
import math
import os.path as osp
import random
from collections import deque

import numpy as np
import torch
from mmengine.dist import all_reduce, get_world_size, is_main_process
from mmengine.hooks import CheckpointHook, Hook
from mmengine.registry import HOOKS
from mmengine.runner import IterBasedTrainLoop

from .checkpoint import atomic_write_text


class DivergenceError(RuntimeError):
    """Training produced a non-finite loss, gradient norm or weight."""


@HOOKS.register_module()
class DivergenceGuardHook(Hook):
    """Stop training at the first non-finite loss (or gradient norm).

    After every training iteration it checks the logged loss terms (the keys
    with 'loss' in their name, as mmengine sums them) and, when the optimizer
    wrapper clips gradients (``clip_grad``), the gradient norm; a non-finite value raises :class:`DivergenceError` naming the epoch, the
    iteration and every loss term, before any later hook (logging, checkpoint)
    runs, so no checkpoint of the diverged weights is written. Before every
    checkpoint is written it checks that all its weights and buffers are finite.

    With mixed precision (an optimizer wrapper with a dynamic ``loss_scaler``,
    mmengine's AmpOptimWrapper) an overflowing step is skipped by the scaler and
    is normal: then only a non-finite loss value stops training, or
    ``max_skipped_steps`` skipped steps in a row (the loss scale went down at each).

    In a distributed run the decision is all-reduced, so every process stops at
    the same iteration.

    Args:
        max_skipped_steps (int): consecutive AMP steps skipped for overflow after
            which training stops. Defaults to 50 (the dynamic scale would have
            been halved 50 times, from 65536 to below 1e-10).
    """

    priority = 'VERY_HIGH'  # before the logger and checkpoint hooks

    def __init__(self, max_skipped_steps=50):
        if not isinstance(max_skipped_steps, int) or max_skipped_steps < 1:
            raise ValueError(f'DivergenceGuardHook: max_skipped_steps must be an int >= 1, '
                             f'got {max_skipped_steps!r}')
        self.max_skipped_steps = max_skipped_steps
        self.skipped = 0
        self._scale = None

    @staticmethod
    def _scaler(runner):
        scaler = getattr(runner.optim_wrapper, 'loss_scaler', None)
        return scaler if scaler is not None and hasattr(scaler, 'get_scale') else None

    @staticmethod
    def _grad_norm_buffer(runner):
        return runner.message_hub.log_scalars.get('train/grad_norm')

    def before_train_iter(self, runner, batch_idx, data_batch=None):
        scaler = self._scaler(runner)
        self._scale = scaler.get_scale() if scaler is not None else None

    def _where(self, runner, batch_idx):
        if isinstance(runner.train_loop, IterBasedTrainLoop):
            return f'iteration {runner.iter + 1}'
        return f'epoch {runner.epoch + 1}, iteration {runner.iter + 1} (batch {batch_idx + 1} of the epoch)'

    def after_train_iter(self, runner, batch_idx, data_batch=None, outputs=None):
        terms = {k: float(v.detach()) if isinstance(v, torch.Tensor) else float(v)
                 for k, v in (outputs or {}).items()
                 if isinstance(v, (int, float)) or (isinstance(v, torch.Tensor) and v.numel() == 1)}
        bad_loss = [k for k, v in terms.items() if 'loss' in k and not math.isfinite(v)]
        scaler = self._scaler(runner)
        bad_grad = None
        skipped = False
        if scaler is not None:
            skipped = self._scale is not None and scaler.get_scale() < self._scale
        else:
            buf = self._grad_norm_buffer(runner)  # present when clip_grad is set
            if buf is not None:
                grad_norm = float(buf.current())
                if not math.isfinite(grad_norm):
                    bad_grad = grad_norm
        self.skipped = self.skipped + 1 if skipped else 0
        too_many_skips = self.skipped >= self.max_skipped_steps
        stop = bool(bad_loss) or bad_grad is not None or too_many_skips
        if get_world_size() > 1:
            flag = torch.tensor([float(stop)], device=_device(runner))
            all_reduce(flag, op='max')
            stop = bool(flag.item())
        if not stop:
            return
        listing = ', '.join(f'{k}={v:.6g}' for k, v in terms.items())
        if bad_loss:
            why = f'non-finite loss terms {bad_loss}'
        elif bad_grad is not None:
            why = f'non-finite gradient norm ({bad_grad})'
        elif too_many_skips:
            why = (f'{self.skipped} AMP steps in a row were skipped for overflowing gradients '
                   f'(loss scale now {scaler.get_scale():.3g}; max_skipped_steps='
                   f'{self.max_skipped_steps})')
        else:
            why = 'another process of this distributed run found a non-finite value'
        last = runner.message_hub.get_info('last_ckpt')
        raise DivergenceError(
            f'training diverged at {self._where(runner, batch_idx)}: {why}. Loss terms: '
            f'{listing or "(none logged)"}. Training stopped; no checkpoint was written from '
            f'these weights (last checkpoint: {last or "none yet"}). Lower the learning rate, '
            'enable gradient clipping (optim_wrapper.clip_grad) or check the data.')

    def before_save_checkpoint(self, runner, checkpoint):
        bad = [k for k, v in checkpoint.get('state_dict', {}).items()
               if isinstance(v, torch.Tensor) and v.is_floating_point()
               and not bool(torch.isfinite(v).all())]
        if bad:
            raise DivergenceError(
                f'refusing to write a checkpoint at epoch {runner.epoch + 1}, iteration '
                f'{runner.iter}: {len(bad)} tensors hold non-finite values, e.g. {bad[:10]}. '
                'The previous checkpoints are kept.')


def _device(runner):
    model = getattr(runner.model, 'module', runner.model)
    try:
        return next(model.parameters()).device
    except StopIteration:
        return torch.device('cpu')


@HOOKS.register_module()
class SafeCheckpointHook(CheckpointHook):
    """mmengine's CheckpointHook, saving before it deletes.

    The new checkpoint is written first (through the runner; with
    :class:`~vmamba_mm.engine.SafeRunner` to a temporary file renamed into
    place), then ``last_checkpoint`` is rewritten atomically to name it, and
    only then are checkpoints beyond ``max_keep_ckpts`` deleted. A failed or
    interrupted save (a kill, a full disk, non-finite weights refused by
    :class:`DivergenceGuardHook`) therefore never costs the newest good
    checkpoint. Arguments as :class:`mmengine.hooks.CheckpointHook`.
    """

    def _save_checkpoint_with_step(self, runner, step, meta):
        dropped = []
        if self.max_keep_ckpts > 0 and not (self.keep_ckpt_ids and self.keep_ckpt_ids[-1] == step):
            ids = list(self.keep_ckpt_ids) + [step]
            dropped, kept = ids[:-self.max_keep_ckpts], ids[-self.max_keep_ckpts:]
            self.keep_ckpt_ids = deque(kept, self.max_keep_ckpts)
            runner.message_hub.update_info('keep_ckpt_ids', kept)

        ckpt_filename = self.filename_tmpl.format(step)
        self.last_ckpt = self.file_backend.join_path(self.out_dir, ckpt_filename)
        runner.message_hub.update_info('last_ckpt', self.last_ckpt)
        runner.save_checkpoint(
            self.out_dir, ckpt_filename, self.file_client_args,
            save_optimizer=self.save_optimizer, save_param_scheduler=self.save_param_scheduler,
            meta=meta, by_epoch=self.by_epoch, backend_args=self.backend_args, **self.args)
        if not is_main_process():
            return
        atomic_write_text(osp.join(runner.work_dir, 'last_checkpoint'), self.last_ckpt)
        for old in dropped:
            path = self.file_backend.join_path(self.out_dir, self.filename_tmpl.format(old))
            if self.file_backend.isfile(path):
                self.file_backend.remove(path)


def get_rng_state():
    """This process's Python, NumPy, torch CPU (and CUDA) random states."""
    state = dict(python=random.getstate(), numpy=np.random.get_state(),
                 torch=torch.get_rng_state())
    if torch.cuda.is_available() and torch.cuda.is_initialized():
        state['cuda'] = torch.cuda.get_rng_state_all()
    return state


def set_rng_state(state):
    """Restore what :func:`get_rng_state` returned."""
    random.setstate(state['python'])
    np.random.set_state(state['numpy'])
    torch.set_rng_state(state['torch'])
    if 'cuda' in state and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state['cuda'])


class _RestoreAfter:
    """Iterator wrapper: restore a random state after ``n`` items were taken."""

    def __init__(self, iterator, n, state):
        self.iterator, self.n, self.state = iterator, n, state

    def __iter__(self):
        return self

    def __next__(self):
        if self.state is not None and self.n == 0:
            set_rng_state(self.state)
            self.state = None
        self.n -= 1
        return next(self.iterator)


class RandomStateHook(Hook):
    """Keeps the training random streams where an uninterrupted run has them.

    :class:`~vmamba_mm.engine.SafeRunner` registers it. Validation during
    training runs on a copy of the random state (restored after it), so the
    training stream does not depend on whether, or how often, it validated. On
    resume, the random states saved in the checkpoint are restored at the point
    the checkpoint was written: before the first epoch of an epoch-based loop,
    after the data an iteration-based loop skips (which runs the data pipeline).
    """

    priority = 'HIGHEST'

    def __init__(self):
        self.pending = None
        self._before_val = None

    def restore_on_next_epoch(self, state):
        self.pending = state

    def before_train_epoch(self, runner):
        if self.pending is None:
            return
        loop = runner.train_loop
        if isinstance(loop, IterBasedTrainLoop) and loop.iter > 0:
            loop.dataloader_iterator = _RestoreAfter(loop.dataloader_iterator, loop.iter,
                                                     self.pending)
        else:
            set_rng_state(self.pending)
        self.pending = None

    def before_val(self, runner):
        self._before_val = get_rng_state()

    def after_val(self, runner):
        if self._before_val is not None:
            set_rng_state(self._before_val)
            self._before_val = None
