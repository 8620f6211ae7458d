"""Image inference with the ecosystem's own inferencers and our configs.

mmdet ``DetInferencer``, mmseg ``MMSegInferencer`` and mmpretrain
``ImageClassificationInferencer`` run small models of our configs on generated
toy images (tools/data/make_toy_*.py) and draw their predictions to files, as a
user would: config path + checkpoint (saved the way mmengine saves one, with
the dataset's class names), device 'cpu'.
"""
import glob
import os.path as osp
import subprocess
import sys

import cv2
import pytest
import torch
from mmengine.config import Config

import vmamba_mm  # noqa: F401  (registers our models)

ROOT = osp.dirname(osp.dirname(osp.abspath(__file__)))


def make_toy(tool, out, *args):
    subprocess.run([sys.executable, osp.join(ROOT, 'tools', 'data', tool), '--out', str(out),
                    *map(str, args)], check=True, cwd=ROOT, capture_output=True)


@pytest.fixture(scope='module')
def images(tmp_path_factory):
    root = tmp_path_factory.mktemp('toy')
    make_toy('make_toy_coco.py', root / 'coco', '--num-train', 1, '--num-val', 1)
    make_toy('make_toy_ade20k.py', root / 'ade', '--num-train', 1, '--num-val', 1)
    return {'coco': sorted(glob.glob(str(root / 'coco' / 'val2017' / '*.jpg')))[0],
            'ade': sorted(glob.glob(str(root / 'ade' / 'images' / 'validation' / '*.jpg')))[0]}


def save_checkpoint(cfg, scope, classes, path):
    """Random weights of the config's model, saved as mmengine saves a trained one
    (with the dataset's class names and palette)."""
    from mmengine.registry import DefaultScope
    registry = __import__(f'{scope}.registry', fromlist=['MODELS']).MODELS
    with DefaultScope.overwrite_default_scope(scope):
        model = registry.build(cfg.model)
    model.init_weights()
    palette = [[(37 * i) % 256, (91 * i) % 256, (173 * i) % 256] for i in range(len(classes))]
    torch.save({'meta': {'dataset_meta': {'classes': list(classes), 'palette': palette}},
                'state_dict': model.state_dict()}, path)
    return str(path)


def assert_drawing(path, image):
    """``path`` is a readable image of ``image``'s size."""
    drawn, src = cv2.imread(path), cv2.imread(image)
    assert drawn is not None, f'{path} is not an image'
    assert drawn.shape == src.shape, (drawn.shape, src.shape)


@pytest.mark.parametrize('config', ['mask_rcnn_vmamba_toy.py', 'mask_rcnn_vim_toy.py'])
def test_det_inferencer_draws_predictions(config, images, tmp_path):
    from mmdet.apis import DetInferencer
    path = osp.join(ROOT, 'configs', 'demo', config)
    cfg = Config.fromfile(path)
    weights = save_checkpoint(cfg, 'mmdet', cfg.classes, tmp_path / 'model.pth')
    inferencer = DetInferencer(model=path, weights=weights, device='cpu', show_progress=False)
    result = inferencer(images['coco'], out_dir=str(tmp_path / 'out'), pred_score_thr=0.0)
    pred = result['predictions'][0]
    assert {'labels', 'scores', 'bboxes', 'masks'} <= set(pred)
    assert tuple(inferencer.model.dataset_meta['classes']) == cfg.classes
    assert_drawing(str(tmp_path / 'out' / 'vis' / osp.basename(images['coco'])), images['coco'])


def test_seg_inferencer_draws_predictions(images, tmp_path):
    from mmseg.apis import MMSegInferencer
    path = osp.join(ROOT, 'configs', 'demo', 'upernet_vmamba_toy.py')
    cfg = Config.fromfile(path)
    weights = save_checkpoint(cfg, 'mmseg', cfg.classes, tmp_path / 'model.pth')
    inferencer = MMSegInferencer(model=path, weights=weights, device='cpu')
    result = inferencer(images['ade'], out_dir=str(tmp_path / 'out'))
    image = cv2.imread(images['ade'])
    assert result['predictions'].shape == image.shape[:2]
    assert result['predictions'].max() < len(cfg.classes)
    drawings = glob.glob(str(tmp_path / 'out' / 'vis' / '*'))
    assert len(drawings) == 1
    assert_drawing(drawings[0], images['ade'])


def test_classification_inferencer_draws_predictions(images, tmp_path):
    from mmpretrain.apis import ImageClassificationInferencer
    cfg = Config.fromfile(osp.join(ROOT, 'configs', 'vmamba_t_in1k_cls.py'))
    cfg.merge_from_dict({'model.backbone.arch': dict(_delete_=True, depths=[1, 1, 1, 1],
                                                     dims=16),
                         'model.head.in_channels': 128, 'model.head.num_classes': 3})
    classes = ('circle', 'triangle', 'rectangle')
    weights = save_checkpoint(cfg, 'mmpretrain', classes, tmp_path / 'model.pth')
    from mmengine.registry import DefaultScope
    # mmpretrain's inferencer builds its pipeline in the current default scope, which
    # the mmdet / mmseg inferencers of the other tests in this process have set.
    with DefaultScope.overwrite_default_scope('mmpretrain'):
        inferencer = ImageClassificationInferencer(model=cfg, pretrained=weights, device='cpu')
        result = inferencer(images['coco'], show_dir=str(tmp_path / 'vis'))[0]
    assert result['pred_class'] in classes and len(result['pred_scores']) == 3
    drawn = str(tmp_path / 'vis' / (osp.splitext(osp.basename(images['coco']))[0] + '.png'))
    assert_drawing(drawn, images['coco'])
