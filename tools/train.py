"""Train a vmamba_mm model with mmengine's Runner (mmdet, mmseg or mmpretrain config).

Examples::

    python tools/train.py configs/demo/mask_rcnn_vmamba_toy.py
    python tools/train.py CONFIG --work-dir work_dirs/x --resume          # latest checkpoint
    python tools/train.py CONFIG --resume work_dirs/x/epoch_4.pth         # a given one
    python tools/train.py CONFIG --amp --cfg-options train_dataloader.batch_size=4
    bash tools/dist_train.sh CONFIG 8                                     # torchrun, DDP

The task library comes from the config's ``default_scope``. On a machine without
CUDA, distributed runs use the gloo backend over CPU processes.
"""
import argparse
import os.path as osp
import sys

sys.path.insert(0, osp.dirname(osp.dirname(osp.abspath(__file__))))  # run from a checkout

from vmamba_mm.engine import DatasetError, DivergenceError  # noqa: E402
from vmamba_mm.runner import (add_runner_arguments, build_runner, check_data_paths,  # noqa: E402
                              default_work_dir, load_config, parse_runner_args, register_scope,
                              setup_launcher, task_scope)


def parse_args(argv=None):
    parser = argparse.ArgumentParser(description='Train a model (mmengine Runner)')
    parser.add_argument('config', help='config file path')
    parser.add_argument('--work-dir', help='where logs and checkpoints go '
                        '(default: work_dirs/<config name>)')
    parser.add_argument('--resume', nargs='?', type=str, const='auto',
                        help='resume from a checkpoint path, or (no value) from the '
                        'latest checkpoint in the work dir')
    parser.add_argument('--amp', action='store_true',
                        help='mixed precision training (AmpOptimWrapper; needs CUDA)')
    add_runner_arguments(parser)
    return parse_runner_args(parser, argv)


def enable_amp(cfg):
    """Switch the optimizer wrapper to mmengine's AmpOptimWrapper (CUDA only)."""
    import torch
    if not torch.cuda.is_available():
        raise RuntimeError('--amp needs a CUDA GPU: mmengine\'s AmpOptimWrapper does not run '
                           'on CPU. Train without --amp on this machine.')
    if cfg.optim_wrapper.get('type', 'OptimWrapper') != 'OptimWrapper':
        raise ValueError(f'--amp: optim_wrapper.type is {cfg.optim_wrapper.type!r}; '
                         'expected OptimWrapper (or drop --amp)')
    cfg.optim_wrapper.type = 'AmpOptimWrapper'
    cfg.optim_wrapper.loss_scale = 'dynamic'


def prepare(args):
    """The config to run, checked (config, scope, amp, data paths, launcher)."""
    cfg = load_config(args.config, args.cfg_options)
    scope = task_scope(cfg)
    cfg.work_dir = args.work_dir or cfg.get('work_dir') or default_work_dir(args.config)
    if args.amp:
        enable_amp(cfg)
    if args.resume == 'auto':
        cfg.resume, cfg.load_from = True, None
    elif args.resume is not None:
        if not osp.isfile(args.resume):
            raise FileNotFoundError(f'--resume checkpoint not found: {args.resume!r}')
        cfg.resume, cfg.load_from = True, args.resume
    check_data_paths(cfg, ('train', 'val'))
    register_scope(scope)
    setup_launcher(cfg, args.launcher)
    return cfg


def main(argv=None):
    args = parse_args(argv)
    try:
        cfg = prepare(args)
    except (FileNotFoundError, ValueError, RuntimeError) as e:
        raise SystemExit(f'train.py: error: {e}')
    runner = build_runner(cfg)
    try:
        runner.train()
    except (DatasetError, DivergenceError) as e:
        raise SystemExit(f'train.py: error: {e}')


if __name__ == '__main__':
    main()
