"""mmengine's Runner with crash-safe checkpoints and exact, fault-tolerant resume."""
import os.path as osp

from mmengine.dist import all_gather_object, get_rank, get_world_size, is_main_process
from mmengine.hooks import CheckpointHook
from mmengine.registry import RUNNERS
from mmengine.runner import Runner

from .checkpoint import atomic_replace, checkpoint_problem, resume_candidates
from .data_checks import annotation_problems, missing_files
from .hooks import RandomStateHook, SafeCheckpointHook, get_rng_state


class DatasetError(RuntimeError):
    """A dataset's annotation file or listed files cannot be used."""


@RUNNERS.register_module()
class SafeRunner(Runner):
    """Runner whose checkpoints survive crashes and resume exactly.

    Select it with ``runner_type = 'SafeRunner'`` (our configs inherit it from
    ``configs/_base_/safe_training.py``). Differences from mmengine's Runner:

    - **Atomic checkpoints**: a checkpoint is written to ``.<name>.tmp`` in the
      same folder, flushed, and renamed into place; its checkpoint hook must be
      :class:`SafeCheckpointHook` (``last_checkpoint`` rewritten after the
      rename, old checkpoints deleted after that).
    - **Random states in checkpoints**: every process's Python, NumPy and torch
      (CPU, CUDA) random states go into ``meta['rng_states']`` (one entry per
      process); ``resume`` restores them where the checkpoint was written
      (:class:`RandomStateHook`). With deterministic settings a killed and
      resumed run ends bit-identical to an uninterrupted one.
    - **Checked datasets**: see :meth:`build_dataloader`.
    - **Fault-tolerant auto-resume** (``resume=True`` without ``load_from``): the
      newest readable checkpoint among ``last_checkpoint`` and the work dir's
      ``epoch_*.pth`` / ``iter_*.pth``; an unreadable or missing one is skipped
      with a warning naming it; if candidates exist but none is readable, an
      error lists each with its problem. No candidate at all: training starts
      from scratch (logged). An explicit ``load_from`` that cannot be read is an
      error naming it.
    - **compile=True** compiles ``train_step`` as mmengine does, with the
      optimizer update left to run eagerly (a graph break there): dynamo's
      tracing of the optimizer step crashes on mmengine's parameter groups
      (torch 2.13: ``InternalTorchDynamoError: 'UserDefinedDictVariable' object
      has no attribute 'items'``), and the step is elementwise work that
      compilation would not speed up much.
    - **compile=dict(module='backbone', ...)** compiles only that submodule's
      ``forward`` (a dotted attribute path of the model; the other keys go to
      ``torch.compile``), for detectors, whose heads change shapes with every
      batch (numbers of boxes, masks) and recompile without end. Parameter
      names and checkpoints are unchanged.
    """

    def _maybe_compile(self, target):
        cfg = self.cfg.get('compile', None)
        if isinstance(cfg, dict) and 'module' in cfg:
            if target == 'train_step':
                self._compile_module(dict(cfg))
            return
        super()._maybe_compile(target)
        if target == 'train_step' and cfg:
            import torch
            wrapper = self.optim_wrapper
            wrapper.update_params = torch.compiler.disable(wrapper.update_params)

    def _compile_module(self, cfg):
        """``compile=dict(module='backbone', **torch_compile_kwargs)``: compile the
        ``forward`` of that submodule of the (unwrapped) model in place."""
        import torch
        from mmengine.model import is_model_wrapper
        path = cfg.pop('module')
        model = self.model.module if is_model_wrapper(self.model) else self.model
        try:
            module = model.get_submodule(str(path))
        except AttributeError:
            children = ', '.join(n for n, _ in model.named_children())
            raise ValueError(f'compile.module={path!r}: {type(model).__name__} has no '
                             f'submodule {path!r} (its submodules: {children})') from None
        module.forward = torch.compile(module.forward, **cfg)
        self.logger.info(f'model.{path} ({type(module).__name__}) has been compiled '
                         f'(torch.compile options {cfg}); the first iterations will be slow.')

    def build_dataloader(self, dataloader, seed=None, diff_rank_seed=False):
        """As :meth:`Runner.build_dataloader`, with the dataset checked: a dataset
        that fails to build is reported with its annotation file (and, for COCO
        files, the missing fields); files it lists that do not exist stop the run
        here, listed, instead of when a sample reaches them."""
        if not isinstance(dataloader, dict):
            return super().build_dataloader(dataloader, seed, diff_rank_seed)
        dataset_cfg = dataloader.get('dataset', {})
        try:
            loader = super().build_dataloader(dataloader, seed, diff_rank_seed)
        except Exception as e:
            cfgs = [dataset_cfg]
            while isinstance(cfgs[-1], dict) and isinstance(cfgs[-1].get('dataset'), dict):
                cfgs.append(cfgs[-1]['dataset'])
            named = [c for c in cfgs if isinstance(c, dict) and c.get('ann_file')]
            where = ''.join(f'\n  {c.get("type")}: data_root={c.get("data_root")!r}, '
                            f'ann_file={c.get("ann_file")!r}' for c in named)
            found = [p for c in named for p in annotation_problems(c)]
            raise DatasetError(
                f'cannot build the dataset ({type(e).__name__}: {e}){where}' +
                (''.join(f'\n  {p}' for p in found))) from e
        problem = missing_files(loader.dataset)
        if problem:
            raise DatasetError(f'{type(loader.dataset).__name__} '
                               f'(data_root={dataset_cfg.get("data_root")!r}): {problem}')
        return loader

    def register_hooks(self, default_hooks=None, custom_hooks=None):
        super().register_hooks(default_hooks, custom_hooks)
        plain = [h for h in self.hooks
                 if isinstance(h, CheckpointHook) and not isinstance(h, SafeCheckpointHook)]
        if plain:
            raise ValueError('SafeRunner: default_hooks.checkpoint is a plain CheckpointHook, '
                             'which deletes old checkpoints before writing the new one; use '
                             "type='SafeCheckpointHook' (same arguments)")
        self.random_state_hook = RandomStateHook()
        self.register_hook(self.random_state_hook)

    def save_checkpoint(self, out_dir, filename, file_client_args=None, save_optimizer=True,
                        save_param_scheduler=True, meta=None, by_epoch=True, backend_args=None):
        """As :meth:`Runner.save_checkpoint`, atomically and with every process's
        random states. Every process must call it (the states are gathered)."""
        meta = dict(meta or {})
        meta['rng_states'] = all_gather_object(get_rng_state())
        if not is_main_process():
            return
        if file_client_args is not None or backend_args is not None or '://' in str(out_dir):
            raise ValueError(f'SafeRunner writes checkpoints to a local folder only; got '
                             f'out_dir={out_dir!r}, backend_args={backend_args!r}')
        tmp_name = f'.{filename}.tmp'
        super().save_checkpoint(out_dir, tmp_name, save_optimizer=save_optimizer,
                                save_param_scheduler=save_param_scheduler, meta=meta,
                                by_epoch=by_epoch)
        atomic_replace(osp.join(out_dir, tmp_name), osp.join(out_dir, filename))

    def load_checkpoint(self, filename, *args, **kwargs):
        checkpoint = super().load_checkpoint(filename, *args, **kwargs)
        self._loaded_meta = checkpoint.get('meta', {}) if isinstance(checkpoint, dict) else {}
        return checkpoint

    def resume(self, filename, *args, **kwargs):
        """As :meth:`Runner.resume`, then schedule the random states' restore."""
        self._loaded_meta = {}
        super().resume(filename, *args, **kwargs)
        states = self._loaded_meta.get('rng_states')
        if states is None:
            self.logger.warning(f'{filename} holds no random states (not written by SafeRunner): '
                                'the resumed run will not repeat an uninterrupted one exactly')
        elif len(states) != get_world_size():
            self.logger.warning(f'{filename} holds the random states of {len(states)} processes, '
                                f'this run has {get_world_size()}: random states not restored, '
                                'the resumed run will not repeat an uninterrupted one exactly')
        else:
            self.random_state_hook.restore_on_next_epoch(states[get_rank()])

    def load_or_resume(self):
        if self._has_loaded:
            return
        if self._resume and self._load_from is None:
            path = self._newest_readable_checkpoint()
            if path is None:
                self.logger.info(f'resume: no checkpoint in {self.work_dir}; training from scratch')
                return
            self.logger.info(f'resume: from the newest readable checkpoint {path}')
            self.resume(path)
            self._has_loaded = True
            return
        if self._load_from is not None and '://' not in self._load_from:
            problem = checkpoint_problem(self._load_from)
            if problem is not None:
                raise RuntimeError(f'cannot read checkpoint {self._load_from!r}: {problem}')
        super().load_or_resume()

    def _newest_readable_checkpoint(self):
        candidates, named = resume_candidates(self.work_dir)
        tried = []
        for path in candidates:
            problem = checkpoint_problem(path)
            if problem is None:
                return path
            source = ' (named in last_checkpoint)' if path == named else ''
            tried.append(f'{path}{source}: {problem}')
            self.logger.warning(f'resume: skipping checkpoint {path}{source}: {problem}')
        if tried:
            raise RuntimeError('resume: no readable checkpoint in ' + self.work_dir +
                               '; tried, newest first:\n  ' + '\n  '.join(tried))
        return None
