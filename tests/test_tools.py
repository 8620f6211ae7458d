"""End-to-end tests of the detection tools: toy data, train / resume / load_from /
test (metrics, --out, --show-dir), torchrun (2 CPU processes, gloo), clear errors,
and loading mmengine checkpoints with torch's weights_only=True.

The tools run as subprocesses (``sys.executable``) on a tiny generated dataset with
the demo config (small VMamba), a few iterations each.
"""
import glob
import io
import json
import os
import os.path as osp
import pickle
import socket
import subprocess
import sys
from collections import OrderedDict

import numpy as np
import pytest
import torch

import vmamba_mm  # noqa: F401  (lets torch.load(weights_only=True) read mmengine checkpoints)

ROOT = osp.dirname(osp.dirname(osp.abspath(__file__)))
DEMO_CONFIG = osp.join(ROOT, 'configs', 'demo', 'mask_rcnn_vmamba_toy.py')
MAKE_TOY = osp.join(ROOT, 'tools', 'data', 'make_toy_coco.py')


def run(args, expect_ok=True, timeout=600, env=None):
    """Run a tool from the repository root; return (returncode, stdout + stderr)."""
    full_env = dict(os.environ, PYTHONPATH=ROOT, **(env or {}))
    proc = subprocess.run(args, cwd=ROOT, env=full_env, capture_output=True, text=True,
                          timeout=timeout)
    out = proc.stdout + proc.stderr
    if expect_ok and proc.returncode != 0:
        raise AssertionError(f'{args} failed ({proc.returncode}):\n{out[-6000:]}')
    return proc.returncode, out


def py(tool, *args, **kwargs):
    return run([sys.executable, osp.join(ROOT, 'tools', tool), *map(str, args)], **kwargs)


def write_config(path, data_root, **overrides):
    """A user config inheriting the demo config, pointed at ``data_root``."""
    lines = [f"_base_ = [{DEMO_CONFIG!r}]",
             f"data_root = {data_root + '/'!r}"]
    for split in ('train', 'val', 'test'):
        lines.append(f"{split}_dataloader = dict(batch_size=2, dataset=dict(data_root=data_root))")
    lines.append("val_evaluator = dict(ann_file=data_root + 'annotations/instances_val2017.json')")
    lines.append("test_evaluator = val_evaluator")
    # keep every detection: a model trained for 4 iterations scores below the default
    # 0.05, and CocoMetric reports no mAP keys for an empty result list
    lines.append("model = dict(test_cfg=dict(rcnn=dict(score_thr=0.0)))")
    lines.append("default_hooks = dict(logger=dict(interval=1), checkpoint=dict(interval=1, "
                 "max_keep_ckpts=3))")
    lines += [f'{k} = {v!r}' for k, v in overrides.items()]
    with open(path, 'w') as f:
        f.write('\n'.join(lines) + '\n')
    return str(path)


def scalars(work_dir):
    """All records of mmengine's scalars.json files under ``work_dir``."""
    records = []
    for fname in sorted(glob.glob(osp.join(work_dir, '*', 'vis_data', 'scalars.json'))):
        with open(fname) as f:
            records += [json.loads(line) for line in f if line.strip()]
    return records


@pytest.fixture(scope='module')
def toy(tmp_path_factory):
    """Toy COCO (4 train / 2 val images) and a config using it."""
    tmp = tmp_path_factory.mktemp('toy')
    data = str(tmp / 'toy_coco')
    py('data/make_toy_coco.py', '--out', data, '--num-train', 4, '--num-val', 2, '--seed', 1)
    cfg = write_config(tmp / 'toy_cfg.py', data,
                       train_cfg=dict(max_epochs=2, val_interval=2))
    return dict(tmp=tmp, data=data, cfg=cfg)


@pytest.fixture(scope='module')
def trained(toy):
    """Train 2 epochs x 2 iterations, evaluating at the end."""
    work = str(toy['tmp'] / 'work')
    _, out = py('train.py', toy['cfg'], '--work-dir', work)
    return dict(work=work, out=out)


def test_make_toy_coco_is_valid_coco(tmp_path):
    from pycocotools.coco import COCO
    out = str(tmp_path / 'a')
    py('data/make_toy_coco.py', '--out', out, '--num-train', 3, '--num-val', 2, '--seed', 3)
    coco = COCO(osp.join(out, 'annotations', 'instances_train2017.json'))
    assert [c['name'] for c in coco.loadCats(coco.getCatIds())] == ['circle', 'triangle', 'rectangle']
    assert len(coco.getImgIds()) == 3 and len(coco.getAnnIds()) >= 3
    import cv2
    for img in coco.loadImgs(coco.getImgIds()):
        arr = cv2.imread(osp.join(out, 'train2017', img['file_name']))
        assert arr.shape == (img['height'], img['width'], 3)
        assert 160 <= img['height'] <= 224 and 160 <= img['width'] <= 224
        for ann in coco.loadAnns(coco.getAnnIds(imgIds=img['id'])):
            x, y, w, h = ann['bbox']
            assert ann['iscrowd'] == 0 and w > 0 and h > 0
            assert x >= 0 and y >= 0 and x + w <= img['width'] and y + h <= img['height']
            mask = coco.annToMask(ann)
            # polygon rasterised by pycocotools ~ the pixel area we recorded
            assert abs(int(mask.sum()) - ann['area']) <= 0.15 * ann['area'] + 10
            ys, xs = np.nonzero(mask)
            assert xs.min() >= x - 1.5 and xs.max() <= x + w + 1.5
            # the mask covers the painted shape: one flat colour inside (JPEG noise aside)
            inner = cv2.erode(mask, np.ones((3, 3), np.uint8), iterations=2).astype(bool)
            if inner.sum() > 20:
                assert arr[inner].std(0).max() < 12
    # fixed seed -> identical dataset; another seed -> a different one
    out2, out3 = str(tmp_path / 'b'), str(tmp_path / 'c')
    py('data/make_toy_coco.py', '--out', out2, '--num-train', 3, '--num-val', 2, '--seed', 3)
    py('data/make_toy_coco.py', '--out', out3, '--num-train', 3, '--num-val', 2, '--seed', 4)
    ann = 'annotations/instances_val2017.json'
    read = lambda d: open(osp.join(d, ann)).read()  # noqa: E731
    assert read(out) == read(out2) != read(out3)


def test_train_writes_checkpoint_and_coco_metrics(trained):
    work = trained['work']
    assert osp.isfile(osp.join(work, 'epoch_2.pth'))
    records = scalars(work)
    train_iters = [r['iter'] for r in records if 'loss' in r]
    assert train_iters[-1] == 4  # 2 epochs x (4 images / batch 2)
    assert all(np.isfinite(r['loss']) for r in records if 'loss' in r)
    metrics = [r for r in records if 'coco/bbox_mAP' in r]
    assert len(metrics) == 1
    for key in ('coco/bbox_mAP', 'coco/bbox_mAP_50', 'coco/segm_mAP', 'coco/segm_mAP_50'):
        assert 0.0 <= metrics[0][key] <= 1.0


def test_resume_continues(toy, trained):
    work = trained['work']
    _, out = py('train.py', toy['cfg'], '--work-dir', work, '--resume',
                '--cfg-options', 'train_cfg.max_epochs=3')
    assert 'resumed epoch: 2, iter: 4' in out
    assert osp.isfile(osp.join(work, 'epoch_3.pth'))
    ckpt = torch.load(osp.join(work, 'epoch_3.pth'), map_location='cpu', weights_only=True)
    assert ckpt['meta']['epoch'] == 3 and ckpt['meta']['iter'] == 6
    # resume from an explicit path, too
    _, out = py('train.py', toy['cfg'], '--work-dir', work, '--resume',
                osp.join(work, 'epoch_3.pth'), '--cfg-options', 'train_cfg.max_epochs=4')
    assert 'resumed epoch: 3, iter: 6' in out


def test_load_from(toy, trained, tmp_path):
    ckpt = osp.join(trained['work'], 'epoch_2.pth')
    _, out = py('train.py', toy['cfg'], '--work-dir', tmp_path / 'w',
                '--cfg-options', f'load_from={ckpt}', 'train_cfg.max_epochs=1',
                'train_cfg.val_interval=5')
    assert f'Load checkpoint from {ckpt}' in out
    assert osp.isfile(osp.join(tmp_path, 'w', 'epoch_1.pth'))


def test_test_tool_metrics_out_and_pictures(toy, trained, tmp_path):
    ckpt = osp.join(trained['work'], 'epoch_2.pth')
    out_pkl, show = str(tmp_path / 'preds.pkl'), str(tmp_path / 'vis')
    _, out = py('test.py', toy['cfg'], ckpt, '--work-dir', tmp_path / 'w', '--out', out_pkl,
                '--show-dir', show)
    assert 'coco/bbox_mAP' in out and 'coco/segm_mAP' in out
    with open(out_pkl, 'rb') as f:
        preds = pickle.load(f)
    assert len(preds) == 2 and 'masks' in preds[0]['pred_instances']
    pictures = glob.glob(osp.join(show, '**', '*.jpg'), recursive=True)
    assert len(pictures) == 2


def test_dist_train_two_cpu_processes(toy, tmp_path):
    with socket.socket() as s:  # a free port for the rendezvous
        s.bind(('127.0.0.1', 0))
        port = s.getsockname()[1]
    work = str(tmp_path / 'dist')
    _, out = run(['bash', osp.join(ROOT, 'tools', 'dist_train.sh'), toy['cfg'], '2',
                  '--work-dir', work, '--cfg-options', 'train_cfg.max_epochs=1',
                  'train_cfg.val_interval=1'],
                 env=dict(PYTHON=sys.executable, PORT=str(port)))
    assert osp.isfile(osp.join(work, 'epoch_1.pth'))
    records = scalars(work)
    # 4 images / (2 processes x 2 per process) = 1 iteration per epoch
    assert [r['iter'] for r in records if 'loss' in r] == [1]
    assert any('coco/bbox_mAP' in r for r in records)
    assert 'Distributed training: True' in out and 'GPU number: 2' in out  # world size
    assert "'backend': 'gloo'" in out


def test_errors_are_clear(toy, tmp_path):
    code, out = py('train.py', tmp_path / 'nope.py', expect_ok=False)
    assert code != 0 and 'config file not found' in out and 'nope.py' in out

    missing = str(tmp_path / 'no_data')
    cfg = write_config(tmp_path / 'cfg_missing.py', missing)
    code, out = py('train.py', cfg, '--work-dir', tmp_path / 'w', expect_ok=False)
    assert code != 0 and 'data not found' in out and missing in out
    assert 'make_toy_coco.py' in out
    code, out = py('test.py', cfg, tmp_path / 'none.pth', expect_ok=False)
    assert code != 0 and 'checkpoint not found' in out

    if not torch.cuda.is_available():
        code, out = py('train.py', toy['cfg'], '--amp', '--work-dir', tmp_path / 'w',
                       expect_ok=False)
        assert code != 0 and '--amp needs a CUDA GPU' in out
    ckpt = tmp_path / 'fake.pth'
    ckpt.write_bytes(b'')
    code, out = py('test.py', toy['cfg'], ckpt, '--tta', expect_ok=False)
    assert code != 0 and '--tta' in out and 'tta_model' in out


def test_weights_only_load_of_mmengine_checkpoint(trained):
    from mmengine.logging import HistoryBuffer
    ckpt = torch.load(osp.join(trained['work'], 'epoch_2.pth'), map_location='cpu',
                      weights_only=True)
    buf = ckpt['message_hub']['log_scalars']['train/loss']
    assert isinstance(buf, HistoryBuffer) and np.isfinite(buf.mean())
    # builtins.getattr in a pickle is only honoured for HistoryBuffer's methods
    payload = io.BytesIO()
    torch.save({'f': _GetattrOnOrderedDict()}, payload)
    payload.seek(0)
    with pytest.raises(pickle.UnpicklingError, match='refusing getattr'):
        torch.load(payload, weights_only=True)


class _GetattrOnOrderedDict:
    """Pickles as ``getattr(collections.OrderedDict, 'fromkeys')``."""

    def __reduce__(self):
        return getattr, (OrderedDict, 'fromkeys')


def test_runner_helpers_reject_bad_configs(tmp_path):
    from mmengine.config import Config

    from vmamba_mm.runner import check_data_paths, task_scope
    with pytest.raises(ValueError, match="default_scope is None"):
        task_scope(Config(dict(model=dict(type='MaskRCNN'))))
    assert task_scope(Config(dict(default_scope='mmseg'))) == 'mmseg'
    root = str(tmp_path)
    cfg = Config(dict(
        val_cfg=dict(type='ValLoop'),
        val_dataloader=dict(dataset=dict(type='RepeatDataset', times=2, dataset=dict(
            data_root=root, ann_file='ann.json', data_prefix=dict(img='imgs/'))))))
    with pytest.raises(FileNotFoundError, match='val_dataloader.dataset.dataset.ann_file'):
        check_data_paths(cfg, ('train', 'val'))
    (tmp_path / 'ann.json').write_text('{}')
    with pytest.raises(FileNotFoundError, match=r"data_prefix.img = '.*imgs/'"):
        check_data_paths(cfg, ('val',))
    (tmp_path / 'imgs').mkdir()
    check_data_paths(cfg, ('train', 'val'))  # all present: no error
    cfg.val_evaluator = dict(type='CocoMetric', ann_file=str(tmp_path / 'missing.json'))
    with pytest.raises(FileNotFoundError, match='val_evaluator.ann_file'):
        check_data_paths(cfg, ('val',))


def test_benchmark_backbones_writes_its_record(tmp_path):
    """tools/benchmark_backbones.py (tiny size, one round): table fields and JSON record."""
    sys.path.insert(0, osp.join(ROOT, 'tools'))
    try:
        import benchmark_backbones
    finally:
        sys.path.pop(0)
    out = tmp_path / 'bb.json'
    record = benchmark_backbones.main(['--rounds', '2', '--warmup', '0', '--size', '64',
                                       '--out', str(out)])
    saved = json.loads(out.read_text())
    assert saved['ratio_vmamba_over_swin'] == record['ratio_vmamba_over_swin']
    for task in ('inference', 'train'):
        assert saved['ratio_vmamba_over_swin'][task] > 0
        for name in ('VMamba-T', 'Swin-T'):
            assert len(saved['times_s'][name][task]['all']) == 2
            assert len(saved['minor_page_faults_per_round'][name][task]['all']) == 2
    assert saved['params']['VMamba-T'] == 29481408


def test_keep_freed_memory_keeps_freed_blocks_in_the_heap():
    """runner.keep_freed_memory (called by the tools on CPU): a freed 24 MiB tensor
    stays in glibc's heap as free memory (mallinfo2), ready for the next allocation
    without page faults, instead of being unmapped (glibc's default for blocks that
    size in a fresh process: then no free heap memory is left). A fresh process per
    case: the setting is process-global."""
    code = (
        'import ctypes, sys, torch\n'
        'from vmamba_mm.runner import keep_freed_memory\n'
        'class MallInfo2(ctypes.Structure):\n'
        '    _fields_ = [(n, ctypes.c_size_t) for n in ("arena", "ordblks", "smblks", "hblks",\n'
        '                "hblkhd", "usmblks", "fsmblks", "uordblks", "fordblks", "keepcost")]\n'
        'libc = ctypes.CDLL("libc.so.6")\n'
        'libc.mallinfo2.restype = MallInfo2\n'
        'if sys.argv[1] == "keep":\n'
        '    assert keep_freed_memory()\n'
        'big = torch.ones(6 << 20)\n'
        'del big\n'
        'print(libc.mallinfo2().fordblks)\n')

    def free_heap_bytes(mode):
        res = subprocess.run([sys.executable, '-c', code, mode], capture_output=True, text=True,
                             cwd=ROOT, timeout=300)
        assert res.returncode == 0, res.stderr[-2000:]
        return int(res.stdout.split()[-1])

    assert free_heap_bytes('keep') >= 24 << 20
    assert free_heap_bytes('default') < 24 << 20
