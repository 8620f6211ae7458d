"""Helpers shared by ``tools/train.py`` and ``tools/test.py``.

They turn a config path plus command-line options into a config that mmengine's
``Runner`` can run for any of our mmdet / mmseg / mmpretrain configs, and fail
early with a clear message (missing config, unknown scope, missing data) instead
of deep inside the runner.
"""
import glob
import importlib
import os
import os.path as osp

import torch

from .registry import TASK_SCOPES

# Dataset keys holding paths (relative to ``data_root`` unless absolute).
_PATH_KEYS = ('ann_file', 'data_prefix')
_REPO_ROOT = osp.dirname(osp.dirname(osp.abspath(__file__)))


def add_runner_arguments(parser):
    """Arguments shared by tools/train.py and tools/test.py (options, launcher, rank)."""
    from mmengine.config import DictAction
    parser.add_argument('--cfg-options', nargs='+', action=DictAction,
                        help='override config keys, e.g. train_dataloader.batch_size=4')
    parser.add_argument('--launcher', choices=['none', 'pytorch', 'slurm', 'mpi'],
                        default='none', help='job launcher')
    # torch.distributed.launch passes --local-rank; torchrun sets LOCAL_RANK.
    parser.add_argument('--local_rank', '--local-rank', type=int, default=0)


def parse_runner_args(parser, argv=None):
    """Parse, and export ``LOCAL_RANK`` for launchers that pass it as an argument."""
    args = parser.parse_args(argv)
    os.environ.setdefault('LOCAL_RANK', str(args.local_rank))
    return args


def load_config(path, cfg_options=None):
    """``Config.fromfile`` with a clear error for a missing file, then merge options."""
    from mmengine.config import Config
    if not osp.isfile(path):
        raise FileNotFoundError(f'config file not found: {path!r} (cwd: {os.getcwd()})')
    cfg = Config.fromfile(path)
    if cfg_options:
        cfg.merge_from_dict(cfg_options)
    return cfg


def task_scope(cfg):
    """The config's ``default_scope``, checked to be one of ``TASK_SCOPES``."""
    scope = cfg.get('default_scope')
    if scope not in TASK_SCOPES:
        raise ValueError(f'config default_scope is {scope!r}; expected one of {TASK_SCOPES} '
                         "(inherit an mmdet/mmseg/mmpretrain base config or set default_scope='mmdet')")
    return scope


def register_scope(scope):
    """Register vmamba_mm and all modules of the task library ``scope``."""
    import vmamba_mm  # noqa: F401  (registers our modules in every task library)
    importlib.import_module(f'{scope}.utils').register_all_modules(init_default_scope=False)


def default_work_dir(config_path):
    """``work_dirs/<config file name without .py>``."""
    return osp.join('work_dirs', osp.splitext(osp.basename(config_path))[0])


def _toy_data_hint():
    scripts = sorted(glob.glob(osp.join(_REPO_ROOT, 'tools', 'data', 'make_toy_*.py')))
    gen = ''.join(f'\n    python {osp.relpath(s)} --help' for s in scripts)
    return ('Generate the toy datasets with the scripts in tools/data/' + (':' + gen if gen else '') +
            '\n(e.g. python tools/data/make_toy_coco.py --out data/toy_coco), or point the config at '
            'your data: --cfg-options <split>_dataloader.dataset.data_root=/path/to/data/')


def _dataset_paths(dataset, where):
    """Yield (description, path) for every local path a dataset config needs."""
    if not isinstance(dataset, dict):
        return
    for key in ('dataset', 'datasets'):  # wrappers: RepeatDataset, ConcatDataset, ...
        inner = dataset.get(key)
        for i, sub in enumerate(inner if isinstance(inner, (list, tuple)) else [inner]):
            if sub is not None:
                yield from _dataset_paths(sub, f'{where}.{key}' + (f'[{i}]' if key == 'datasets' else ''))
    root = dataset.get('data_root') or ''
    if root:
        yield f'{where}.data_root', root
    for key in _PATH_KEYS:
        value = dataset.get(key)
        items = value.items() if isinstance(value, dict) else [(None, value)]
        for sub, rel in items:
            if isinstance(rel, str) and rel:
                yield f'{where}.{key}' + (f'.{sub}' if sub else ''), osp.join(root, rel)


def check_data_paths(cfg, splits):
    """Raise FileNotFoundError naming the first missing dataset/evaluator path.

    Args:
        cfg (Config): the full config.
        splits (Sequence[str]): e.g. ``('train', 'val')`` for training,
            ``('test',)`` for testing.
    """
    needed = []
    for split in splits:
        loader = cfg.get(f'{split}_dataloader')
        if loader is None or (split == 'val' and cfg.get('val_cfg') is None):
            continue
        needed += list(_dataset_paths(loader.get('dataset'), f'{split}_dataloader.dataset'))
        evaluators = cfg.get(f'{split}_evaluator')
        for i, ev in enumerate(evaluators if isinstance(evaluators, (list, tuple)) else [evaluators]):
            if isinstance(ev, dict) and isinstance(ev.get('ann_file'), str) and ev['ann_file']:
                needed.append((f'{split}_evaluator' + (f'[{i}]' if isinstance(evaluators, (list, tuple)) else '')
                               + '.ann_file', ev['ann_file']))
    for what, path in needed:
        if '://' in path:  # remote storage through backend_args: not checked here
            continue
        if not osp.exists(path):
            raise FileNotFoundError(
                f'data not found: {what} = {path!r} does not exist (cwd: {os.getcwd()}).\n'
                + _toy_data_hint())


def setup_launcher(cfg, launcher):
    """Set ``cfg.launcher``; on a machine without CUDA, run DDP on gloo over CPU.

    mmengine's ``init_dist`` always calls ``torch.cuda.set_device`` and wraps the
    model with ``device_ids=[LOCAL_RANK]``, both of which fail without a GPU. On
    CPU the process group is therefore initialised here with the gloo backend
    (``env_cfg.dist_cfg.backend = 'gloo'``) and DDP gets ``device_ids=None``.
    """
    cfg.launcher = launcher
    if launcher == 'none' or torch.cuda.is_available():
        return
    if launcher != 'pytorch':
        raise RuntimeError(f'--launcher {launcher} needs CUDA GPUs; on a CPU-only machine use '
                           '--launcher pytorch (tools/dist_train.sh / dist_test.sh, gloo backend)')
    import torch.distributed as dist
    from datetime import timedelta
    env_cfg = cfg.get('env_cfg') or {}
    dist_cfg = dict(env_cfg.get('dist_cfg') or {}, backend='gloo')
    env_cfg['dist_cfg'] = dist_cfg
    cfg.env_cfg = env_cfg
    if not dist.is_initialized():
        dist.init_process_group(backend='gloo', timeout=timedelta(seconds=dist_cfg.get('timeout', 1800)))
    wrapper = cfg.get('model_wrapper_cfg') or dict(
        type='MMDistributedDataParallel', broadcast_buffers=False,
        find_unused_parameters=cfg.get('find_unused_parameters', False))
    wrapper['device_ids'] = None
    cfg.model_wrapper_cfg = wrapper


def keep_freed_memory():
    """Ask glibc's malloc to keep freed memory in this process; True if it took.

    On CPU, glibc hands large freed blocks back to the kernel (an mmap per
    block above ``M_MMAP_THRESHOLD``, trimming of the heap above
    ``M_TRIM_THRESHOLD``), and the next allocation faults every 4 KiB page in
    again: measured on the 2-core development VM, VMamba-T inference went from
    1.50x to 1.29x Swin-T's time at 2 threads once those faults were gone
    (``tools/benchmark_backbones.py``; README, Benchmarks). This raises both
    thresholds to their maximum (blocks up to 32 MiB come from the heap, which
    is no longer trimmed): the process keeps its peak memory until it exits.
    The tools call it on machines without CUDA; elsewhere (not glibc) it does
    nothing and returns False.
    """
    import ctypes
    import ctypes.util
    try:
        libc = ctypes.CDLL(ctypes.util.find_library('c') or 'libc.so.6')
        mallopt = libc.mallopt
    except (OSError, AttributeError):
        return False
    m_trim_threshold, m_mmap_threshold = -1, -3
    mmap_max = 4 * 1024 * 1024 * ctypes.sizeof(ctypes.c_long)  # glibc's upper limit
    return bool(mallopt(m_mmap_threshold, mmap_max)) and bool(mallopt(m_trim_threshold, 2**31 - 1))


def checkpoint_fit_problems(model, filename):
    """Keys of checkpoint ``filename`` that do not fit ``model`` ('' if it fits).

    Compares the checkpoint's ``state_dict`` (``module.`` prefixes removed) with
    the model's (inside any DDP / test-time-augmentation wrapper), beyond
    ``vmamba_mm.engine.checkpoint.STRICT_ALLOWANCE``: missing, unexpected and
    mis-shaped keys, formatted for an error message.
    """
    from mmengine.runner.checkpoint import _load_checkpoint

    from .engine.checkpoint import format_mismatch, state_dict_mismatch
    while hasattr(model, 'module'):  # MMDistributedDataParallel, BaseTTAModel
        model = model.module
    ckpt = _load_checkpoint(filename, map_location='cpu')
    state = ckpt.get('state_dict', ckpt) if isinstance(ckpt, dict) else None
    if not isinstance(state, dict):
        return f'{filename!r} holds no state dict'
    state = {k[len('module.'):] if k.startswith('module.') else k: v for k, v in state.items()}
    return format_mismatch(state_dict_mismatch(model.state_dict(), state))


def build_runner(cfg):
    """``Runner.from_cfg`` or the config's ``runner_type``; on a machine without
    CUDA, first :func:`keep_freed_memory`."""
    from mmengine.registry import RUNNERS
    from mmengine.runner import Runner
    if not torch.cuda.is_available():
        keep_freed_memory()
    if 'runner_type' in cfg:
        return RUNNERS.build(cfg)
    return Runner.from_cfg(cfg)
