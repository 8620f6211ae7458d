"""Nothing silent: bad annotation files and missing / unreadable images are named
(at the start of training, and all at once by tools/data/check_dataset.py)."""
import json
import os
import os.path as osp
import shutil
import subprocess
import sys

import pytest

from vmamba_mm.engine.data_checks import coco_problems

ROOT = osp.dirname(osp.dirname(osp.abspath(__file__)))
DEMO_CONFIG = osp.join(ROOT, 'configs', 'demo', 'mask_rcnn_vmamba_toy.py')


def tool(path, *args, expect_ok=True):
    env = dict(os.environ, PYTHONPATH=ROOT, OMP_NUM_THREADS='1')
    proc = subprocess.run([sys.executable, osp.join(ROOT, 'tools', path), *map(str, args)],
                          cwd=ROOT, env=env, capture_output=True, text=True, timeout=600)
    out = proc.stdout + proc.stderr
    if expect_ok and proc.returncode != 0:
        raise AssertionError(f'{path} {args} failed ({proc.returncode}):\n{out[-6000:]}')
    return proc.returncode, out


def write_config(path, data_root):
    lines = [f"_base_ = [{DEMO_CONFIG!r}]", f"data_root = {data_root + '/'!r}"]
    for split in ('train', 'val', 'test'):
        lines.append(f"{split}_dataloader = dict(batch_size=2, dataset=dict(data_root=data_root))")
    lines += ["val_evaluator = dict(ann_file=data_root + 'annotations/instances_val2017.json')",
              "test_evaluator = val_evaluator",
              "train_cfg = dict(max_epochs=1, val_interval=1)"]
    with open(path, 'w') as f:
        f.write('\n'.join(lines) + '\n')
    return str(path)


@pytest.fixture(scope='module')
def toy(tmp_path_factory):
    tmp = tmp_path_factory.mktemp('data_checks')
    data = str(tmp / 'clean')
    tool('data/make_toy_coco.py', '--out', data, '--num-train', 4, '--num-val', 2, '--seed', 2)
    return dict(tmp=tmp, data=data)


def broken_copy(toy, name):
    data = str(toy['tmp'] / name)
    shutil.copytree(toy['data'], data)
    return data, write_config(toy['tmp'] / f'{name}.py', data)


def test_coco_problems(tmp_path):
    path = tmp_path / 'a.json'
    path.write_text('{}')
    assert coco_problems(str(path)) == [
        f"{path}: missing required COCO field(s) ['images', 'annotations', 'categories'] "
        "(a list each; the file has [])"]
    path.write_text('{"images": [')
    assert coco_problems(str(path))[0].startswith(f'{path}: cannot read the annotation file as JSON')
    path.write_text(json.dumps(dict(
        images=[dict(id=1, file_name='a.jpg', height=4, width=4), dict(id=2, file_name='b.jpg')],
        annotations=[dict(id=1, image_id=1, category_id=1, bbox=[0, 0, 2, 2], area=4),
                     dict(id=2, image_id=3, category_id=7, bbox=[0, 0, 0, 2], area=0),
                     dict(id=3, image_id=1, category_id=1)],
        categories=[dict(id=1, name='x')])))
    assert coco_problems(str(path)) == [
        f"{path}: 1 images without required fields: images[1] lacks ['height', 'width']",
        f"{path}: 1 annotations without required fields: annotations[2] lacks ['bbox', 'area']",
        f'{path}: 2 annotations with unknown ids: annotations[1] image_id 3 not in images; '
        'annotations[1] category_id 7 not in categories',
        f'{path}: 1 boxes that are not [x, y, w, h] with w, h > 0 (the dataset drops them): '
        'annotations[1] bbox [0, 0, 0, 2]']


@pytest.mark.slow
def test_train_names_a_bad_annotation_file(toy):
    data, cfg = broken_copy(toy, 'empty_ann')
    ann = osp.join(data, 'annotations', 'instances_train2017.json')
    with open(ann, 'w') as f:
        f.write('{}')
    code, out = tool('train.py', cfg, '--work-dir', toy['tmp'] / 'w1', expect_ok=False)
    assert code == 1 and 'train.py: error: cannot build the dataset (KeyError' in out
    assert f"ann_file='annotations/instances_train2017.json'" in out
    assert f"{ann}: missing required COCO field(s) ['images', 'annotations', 'categories']" in out


@pytest.mark.slow
def test_train_lists_missing_images_before_training(toy):
    data, cfg = broken_copy(toy, 'missing_img')
    images = sorted(os.listdir(osp.join(data, 'train2017')))
    for name in images[:2]:
        os.remove(osp.join(data, 'train2017', name))
    code, out = tool('train.py', cfg, '--work-dir', toy['tmp'] / 'w2', expect_ok=False)
    assert code == 1 and '2 of the 4 files listed by the dataset do not exist' in out
    for name in images[:2]:
        assert osp.join(data, 'train2017', name) in out
    assert 'Epoch(train)' not in out  # stopped before the first iteration


@pytest.mark.slow
def test_check_dataset_lists_every_problem_in_one_pass(toy):
    code, out = tool('data/check_dataset.py', write_config(toy['tmp'] / 'clean.py', toy['data']))
    assert code == 0 and 'OK: train: 4 files, val: 2 files read, no problem found' in out

    data, cfg = broken_copy(toy, 'many')
    train_imgs = sorted(os.listdir(osp.join(data, 'train2017')))
    os.remove(osp.join(data, 'train2017', train_imgs[0]))
    with open(osp.join(data, 'train2017', train_imgs[1]), 'wb') as f:
        f.write(b'not a jpeg')
    val_ann = osp.join(data, 'annotations', 'instances_val2017.json')
    with open(val_ann) as f:
        coco = json.load(f)
    del coco['annotations'][0]['area']
    with open(val_ann, 'w') as f:
        json.dump(coco, f)
    code, out = tool('data/check_dataset.py', cfg, expect_ok=False)
    assert code == 1 and '4 problems (train: 4 files read)' in out
    assert f"[train] img_path {osp.join(data, 'train2017', train_imgs[0])}: file does not exist" in out
    assert f"[train] img_path {osp.join(data, 'train2017', train_imgs[1])}: cannot decode" in out
    assert f"[val] {val_ann}: 1 annotations without required fields: annotations[0] lacks " \
           "['area']" in out
    assert "[val] cannot build CocoDataset (data_root=" in out and "KeyError: 'area'" in out
