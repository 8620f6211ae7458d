"""Evaluate a checkpoint with mmengine's Runner (mmdet, mmseg or mmpretrain config).

Examples::

    python tools/test.py configs/demo/mask_rcnn_vmamba_toy.py work_dirs/demo/epoch_12.pth
    python tools/test.py CONFIG CKPT --show-dir vis       # save pictures of the predictions
    python tools/test.py CONFIG CKPT --out results.pkl    # dump the raw predictions
    python tools/test.py CONFIG CKPT --tta                # test-time augmentation (tta_model)
    python tools/test.py CONFIG CKPT --non-strict # evaluate a checkpoint that does not fit
    bash tools/dist_test.sh CONFIG CKPT 8

The checkpoint must fit the config's model: missing, unexpected or mis-shaped keys
stop the test with an error naming them (allowed: BatchNorm ``num_batches_tracked``
and ``data_preprocessor.*``), unless ``--non-strict`` is given.

The metrics are printed and written to ``<work-dir>/<timestamp>/<timestamp>.json``.
"""
import argparse
import os.path as osp
import sys

sys.path.insert(0, osp.dirname(osp.dirname(osp.abspath(__file__))))  # run from a checkout

from vmamba_mm.engine import DatasetError  # noqa: E402
from vmamba_mm.engine.checkpoint import checkpoint_problem  # noqa: E402
from vmamba_mm.runner import (add_runner_arguments, build_runner, check_data_paths,  # noqa: E402
                              checkpoint_fit_problems, default_work_dir, load_config,
                              parse_runner_args, register_scope, setup_launcher, task_scope)


def parse_args(argv=None):
    parser = argparse.ArgumentParser(description='Test (evaluate) a checkpoint')
    parser.add_argument('config', help='config file path')
    parser.add_argument('checkpoint', help='checkpoint file (path or URL)')
    parser.add_argument('--work-dir', help='where the metrics log goes '
                        '(default: work_dirs/<config name>)')
    parser.add_argument('--out', help='dump the predictions to this .pkl file')
    parser.add_argument('--show-dir', help='save pictures of the predictions in this folder '
                        '(relative paths are inside <work-dir>/<timestamp>/)')
    parser.add_argument('--tta', action='store_true',
                        help='test-time augmentation (needs tta_model and tta_pipeline in the config)')
    parser.add_argument('--non-strict', action='store_true',
                        help='evaluate even if the checkpoint does not fit the model (missing, '
                        'unexpected or mis-shaped keys are then only logged)')
    add_runner_arguments(parser)
    return parse_runner_args(parser, argv)


def enable_visualization(cfg, scope, show_dir):
    """Turn on the task library's visualization hook, saving pictures to ``show_dir``."""
    hook = cfg.get('default_hooks', {}).get('visualization')
    if hook is None:
        raise ValueError('--show-dir: the config has no default_hooks.visualization hook')
    if scope == 'mmdet':  # DetVisualizationHook
        hook.update(draw=True, test_out_dir=show_dir)
    elif scope == 'mmseg':  # SegVisualizationHook draws through the visualizer's save_dir
        hook.update(draw=True)
        cfg.visualizer.save_dir = show_dir
    else:  # mmpretrain VisualizationHook
        hook.update(enable=True, out_dir=show_dir)


def enable_tta(cfg):
    """Wrap the model in the config's ``tta_model`` and use ``tta_pipeline``."""
    missing = [k for k in ('tta_model', 'tta_pipeline') if k not in cfg]
    if missing:
        raise ValueError(f'--tta: the config defines no {" / ".join(missing)}')
    dataset = cfg.test_dataloader.dataset
    while 'dataset' in dataset:  # dataset wrappers
        dataset = dataset['dataset']
    dataset.pipeline = cfg.tta_pipeline
    cfg.tta_model.module = cfg.model
    cfg.model = cfg.tta_model


def prepare(args):
    """The config to run, checked (config, scope, checkpoint, data paths, launcher)."""
    cfg = load_config(args.config, args.cfg_options)
    scope = task_scope(cfg)
    cfg.work_dir = args.work_dir or cfg.get('work_dir') or default_work_dir(args.config)
    if '://' not in args.checkpoint and not osp.isfile(args.checkpoint):
        raise FileNotFoundError(f'checkpoint not found: {args.checkpoint!r}')
    cfg.load_from = args.checkpoint
    if args.out is not None and not args.out.endswith(('.pkl', '.pickle')):
        raise ValueError(f'--out must be a .pkl or .pickle file, got {args.out!r}')
    if args.show_dir:
        enable_visualization(cfg, scope, args.show_dir)
    if args.tta:
        enable_tta(cfg)
    if '://' not in args.checkpoint:
        problem = checkpoint_problem(args.checkpoint)
        if problem is not None:
            raise ValueError(f'cannot read checkpoint {args.checkpoint!r}: {problem}')
    check_data_paths(cfg, ('test',))
    register_scope(scope)
    setup_launcher(cfg, args.launcher)
    return cfg, scope


def main(argv=None):
    args = parse_args(argv)
    try:
        cfg, scope = prepare(args)
    except (FileNotFoundError, ValueError, RuntimeError) as e:
        raise SystemExit(f'test.py: error: {e}')
    runner = build_runner(cfg)
    problems = checkpoint_fit_problems(runner.model, args.checkpoint)
    if problems and not args.non_strict:
        raise SystemExit(f'test.py: error: checkpoint {args.checkpoint} does not fit the model '
                         f'of {args.config}:\n  {problems}\n(use --non-strict to evaluate anyway)')
    if problems:
        runner.logger.warning(f'--non-strict: checkpoint {args.checkpoint} does not fit the '
                              f'model:\n  {problems}')
    if args.out is not None:
        if scope == 'mmdet':  # encodes masks as RLE, as mmdet's own tools/test.py
            from mmdet.evaluation import DumpDetResults as Dump
        else:
            from mmengine.evaluator import DumpResults as Dump
        runner.test_evaluator.metrics.append(Dump(out_file_path=args.out))
    try:
        runner.test()
    except DatasetError as e:
        raise SystemExit(f'test.py: error: {e}')


if __name__ == '__main__':
    main()
