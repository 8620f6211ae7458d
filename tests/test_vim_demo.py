"""The toy-data demos with the Vim backbone: configs/demo/mask_rcnn_vim_toy.py and
configs/demo/upernet_vim_toy.py train with tools/train.py on data made by
tools/data/make_toy_coco.py / make_toy_ade20k.py, write a checkpoint and report COCO
bbox / segm mAP and mIoU. Subprocesses (``sys.executable``), tiny data, 2 iterations.
"""
import glob
import json
import os
import os.path as osp
import subprocess
import sys

import torch
from mmengine.config import Config

ROOT = osp.dirname(osp.dirname(osp.abspath(__file__)))
DET_CONFIG = osp.join(ROOT, 'configs', 'demo', 'mask_rcnn_vim_toy.py')
SEG_CONFIG = osp.join(ROOT, 'configs', 'demo', 'upernet_vim_toy.py')


def run_tool(tool, *args):
    """Run tools/<tool> from the repository root; return stdout + stderr."""
    cmd = [sys.executable, osp.join(ROOT, 'tools', tool), *map(str, args)]
    proc = subprocess.run(cmd, cwd=ROOT, env=dict(os.environ, PYTHONPATH=ROOT),
                          capture_output=True, text=True, timeout=300)
    out = proc.stdout + proc.stderr
    assert proc.returncode == 0, f'{cmd} failed ({proc.returncode}):\n{out[-6000:]}'
    return out


def last_metrics(work_dir):
    """The last record of mmengine's scalars.json holding evaluation metrics."""
    files = glob.glob(osp.join(work_dir, '*', 'vis_data', 'scalars.json'))
    assert len(files) == 1, files
    with open(files[0]) as f:
        records = [json.loads(line) for line in f if line.strip()]
    evals = [r for r in records if 'loss' not in r]
    assert evals, records
    return records, evals[-1]


def check_checkpoint(work_dir, name):
    """``name`` is the last checkpoint and holds the 4-layer Vim backbone."""
    with open(osp.join(work_dir, 'last_checkpoint')) as f:
        ckpt_path = f.read().strip()
    assert osp.basename(ckpt_path) == name and osp.isfile(ckpt_path), ckpt_path
    ckpt = torch.load(ckpt_path, map_location='cpu', weights_only=False)
    keys = [k for k in ckpt['state_dict'] if k.startswith('backbone.layers.')]
    assert keys and all(int(k.split('.')[2]) < 4 for k in keys)  # the 4-layer Vim


def test_vim_demo_configs_use_vim():
    det, seg = Config.fromfile(DET_CONFIG), Config.fromfile(SEG_CONFIG)
    for cfg, img_size in ((det, det.image_scale[0]), (seg, seg.crop_size[0])):
        bb = cfg.model.backbone
        assert bb.type == 'Vim' and bb.out_type == 'featmap' and bb.img_size == img_size
        assert 'depths' not in str(bb)  # nothing left over from the VMamba backbone
        assert cfg.optim_wrapper.constructor == 'VimLayerDecayOptimizerConstructor'
        assert 'custom_keys' not in cfg.optim_wrapper.get('paramwise_cfg', {})
    assert det.model.neck.in_channels == [det.model.backbone.arch.embed_dims] * 4
    assert seg.model.decode_head.in_channels == [seg.model.backbone.arch.embed_dims] * 4
    assert seg.model.auxiliary_head.in_channels == seg.model.backbone.arch.embed_dims


def test_mask_rcnn_vim_toy_trains_and_evaluates(tmp_path):
    data = str(tmp_path / 'toy_coco') + '/'
    run_tool('data/make_toy_coco.py', '--out', data, '--num-train', 4, '--num-val', 2,
             '--seed', 1)
    work = str(tmp_path / 'work')
    # 1 epoch = 2 iterations of 2 images; evaluate at its end (all detections kept: a
    # model trained for 2 iterations scores below the default 0.05 threshold)
    out = run_tool(
        'train.py', DET_CONFIG, '--work-dir', work, '--cfg-options',
        f'train_dataloader.dataset.data_root={data}', 'train_dataloader.batch_size=2',
        f'val_dataloader.dataset.data_root={data}', 'val_dataloader.batch_size=2',
        f'test_dataloader.dataset.data_root={data}',
        f'val_evaluator.ann_file={data}annotations/instances_val2017.json',
        'train_cfg.max_epochs=1', 'train_cfg.val_interval=1',
        'default_hooks.checkpoint.interval=1', 'default_hooks.logger.interval=1',
        'model.test_cfg.rcnn.score_thr=0.0')
    assert 'Vim' in out
    check_checkpoint(work, 'epoch_1.pth')
    records, metrics = last_metrics(work)
    losses = [r['loss'] for r in records if 'loss' in r]
    assert len(losses) == 2 and all(torch.isfinite(torch.tensor(losses)))
    for key in ('coco/bbox_mAP', 'coco/segm_mAP'):
        assert key in metrics, metrics
        assert -1.0 <= metrics[key] <= 1.0
    assert 'bbox_mAP' in out and 'segm_mAP' in out


def test_upernet_vim_toy_trains_and_evaluates(tmp_path):
    data = str(tmp_path / 'toy_ade')
    run_tool('data/make_toy_ade20k.py', '--out', data, '--num-train', 4, '--num-val', 2,
             '--size', 64, '--seed', 1)
    work = str(tmp_path / 'work')
    out = run_tool(
        'train.py', SEG_CONFIG, '--work-dir', work, '--cfg-options',
        f'train_dataloader.dataset.data_root={data}', 'train_dataloader.batch_size=2',
        f'val_dataloader.dataset.data_root={data}', f'test_dataloader.dataset.data_root={data}',
        'train_cfg.max_iters=2', 'train_cfg.val_interval=2',
        'default_hooks.checkpoint.interval=2', 'default_hooks.logger.interval=1')
    assert 'Vim' in out
    check_checkpoint(work, 'iter_2.pth')
    records, metrics = last_metrics(work)
    losses = [r['loss'] for r in records if 'loss' in r]
    assert len(losses) == 2 and all(torch.isfinite(torch.tensor(losses)))
    assert 'mIoU' in metrics and 0.0 <= metrics['mIoU'] <= 100.0, metrics
    assert 'mIoU' in out
