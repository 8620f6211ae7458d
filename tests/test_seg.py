"""UperNet + VMamba on ADE20K: configs, model, toy data, the --tta test path."""
import glob
import json
import os.path as osp
import subprocess
import sys

import numpy as np
import pytest
import torch
from mmengine.config import Config
from PIL import Image

ROOT = osp.dirname(osp.dirname(osp.abspath(__file__)))
sys.path.insert(0, osp.join(ROOT, 'tools', 'data'))
from make_toy_ade20k import CLASSES, make_toy_ade20k  # noqa: E402

SEG_CONFIGS = {
    # size: (arch, drop_path_rate, head in_channels, released checkpoint, paper params in M)
    't': ('tiny', 0.2, [96, 192, 384, 768], 'vssm1_tiny_0230s_ckpt_epoch_264.pth', 62),
    's': ('small', 0.3, [96, 192, 384, 768], 'vssm_small_0229_ckpt_epoch_222.pth', 82),
    'b': ('base', 0.6, [128, 256, 512, 1024], 'vssm_base_0229_ckpt_epoch_237.pth', 122),
}
# What the configs build (backbone + UPerHead + FCN auxiliary head); regression values.
EXACT_PARAMS = {'t': 61_902_572, 's': 81_801_260, 'b': 122_069_292}
RELEASES = 'https://github.com/MzeroMiko/VMamba/releases/download/%23v2cls/'
TTA_RATIOS = [0.5, 0.75, 1.0, 1.25, 1.5, 1.75]


def seg_config(size):
    return Config.fromfile(osp.join(ROOT, f'configs/upernet_vmamba_{size}_160k_ade20k.py'))


def build_segmentor(cfg):
    from mmengine.registry import init_default_scope
    from mmseg.registry import MODELS
    init_default_scope('mmseg')
    return MODELS.build(cfg.model)


def tiny_model_cfg(cfg):
    """The config's model with a tiny VMamba and thin heads (BN instead of SyncBN)."""
    model = cfg.model.copy()
    model.backbone.update(arch=dict(depths=(1, 1, 1, 1), dims=8), init_cfg=None)
    bn = dict(type='BN', requires_grad=True)
    model.decode_head.update(in_channels=[8, 16, 32, 64], channels=16, norm_cfg=bn)
    model.auxiliary_head.update(in_channels=32, channels=8, norm_cfg=bn)
    return model


def tuple_of_ratios(tta_pipeline):
    tta = [t for t in tta_pipeline if t['type'] == 'TestTimeAug'][0]
    resizes, flips = tta['transforms'][0], tta['transforms'][1]
    return [r['scale_factor'] for r in resizes], sorted(f['prob'] for f in flips)


@pytest.mark.parametrize('size', ['t', 's', 'b'])
def test_seg_config_settings(size):
    arch, dpr, in_channels, ckpt, _ = SEG_CONFIGS[size]
    cfg = seg_config(size)
    assert cfg.custom_imports == dict(imports=['vmamba_mm'], allow_failed_imports=False)
    bb = cfg.model.backbone
    assert bb.type == 'VMamba' and bb.arch == arch and bb.drop_path_rate == dpr
    assert tuple(bb.out_indices) == (0, 1, 2, 3)
    assert 'embed_dims' not in bb and 'num_heads' not in bb  # Swin keys deleted
    assert bb.init_cfg == dict(type='Pretrained', checkpoint=RELEASES + ckpt)
    head, aux = cfg.model.decode_head, cfg.model.auxiliary_head
    assert head.type == 'UPerHead' and head.channels == 512 and head.num_classes == 150
    assert head.in_channels == in_channels and list(head.in_index) == [0, 1, 2, 3]
    assert aux.type == 'FCNHead' and aux.in_index == 2 and aux.in_channels == in_channels[2]
    assert aux.num_classes == 150 and aux.loss_decode.loss_weight == 0.4
    # data: ADE20K, 512x512 crops, 4 images per GPU (x 4 GPUs = 16)
    assert cfg.crop_size == (512, 512) and cfg.model.data_preprocessor.size == (512, 512)
    assert cfg.train_dataloader.dataset.type == 'ADE20KDataset'
    assert cfg.train_dataloader.batch_size == 4
    # optimiser: AdamW 6e-5, betas (0.9, 0.999), wd 0.01, no decay on norms
    opt = cfg.optim_wrapper.optimizer
    assert opt.type == 'AdamW' and opt.lr == 6e-5 and tuple(opt.betas) == (0.9, 0.999)
    assert opt.weight_decay == 0.01
    assert cfg.optim_wrapper.paramwise_cfg.custom_keys == {'norm': dict(decay_mult=0.)}
    # schedule: linear warm-up 1500 iterations, then poly (power 1) to 0 at 160k
    warm, poly = cfg.param_scheduler
    assert warm.type == 'LinearLR' and (warm.begin, warm.end) == (0, 1500)
    assert warm.start_factor == 1e-6 and not warm.by_epoch
    assert poly.type == 'PolyLR' and (poly.begin, poly.end) == (1500, 160000)
    assert poly.power == 1.0 and poly.eta_min == 0.0 and not poly.by_epoch
    assert cfg.train_cfg.type == 'IterBasedTrainLoop' and cfg.train_cfg.max_iters == 160000
    # multi-scale + flip TTA
    assert cfg.tta_model.type == 'SegTTAModel'
    assert tuple_of_ratios(cfg.tta_pipeline) == (TTA_RATIOS, [0.0, 1.0])


@pytest.mark.parametrize('size', ['t', 's', 'b'])
def test_seg_param_counts_match_paper(size):
    *_, paper_m = SEG_CONFIGS[size]
    cfg = seg_config(size)
    cfg.model.backbone.init_cfg = None
    model = build_segmentor(cfg)
    params = sum(p.numel() for p in model.parameters())
    print(f'UperNet VMamba-{size.upper()}: {params:,} parameters (paper {paper_m}M)')
    assert round(params / 1e6) == paper_m
    assert params == EXACT_PARAMS[size]


def test_upernet_vmamba_loss_backward():
    from mmseg.structures import SegDataSample
    from mmengine.structures import PixelData
    cfg = seg_config('t')
    cfg.model = tiny_model_cfg(cfg)
    cfg.model.data_preprocessor.size = (64, 64)
    model = build_segmentor(cfg)
    model.init_weights()
    model.train()
    torch.manual_seed(0)
    inputs = torch.randn(2, 3, 64, 64)
    samples = []
    for _ in range(2):
        s = SegDataSample(metainfo=dict(img_shape=(64, 64), pad_shape=(64, 64)))
        label = torch.randint(0, 150, (1, 64, 64))
        label[:, :4] = 255  # ignored pixels
        s.gt_sem_seg = PixelData(data=label)
        samples.append(s)
    losses = model.loss(inputs, samples)
    assert set(losses) >= {'decode.loss_ce', 'aux.loss_ce'}
    # untrained heads: CE ~ log(150); the auxiliary loss carries its 0.4 weight
    assert 0.5 * np.log(150) < losses['decode.loss_ce'].item() < 2 * np.log(150)
    assert 0.4 * 0.5 * np.log(150) < losses['aux.loss_ce'].item() < 0.4 * 2 * np.log(150)
    total = sum(v for k, v in losses.items() if 'loss' in k)
    total.backward()
    for name in ('patch_embed.conv1.weight', 'layers.0.blocks.0.op.A_logs',
                 'layers.3.blocks.0.op.x_proj_weight', 'outnorm0.weight'):
        grad = dict(model.backbone.named_parameters())[name].grad
        assert grad is not None and torch.isfinite(grad).all() and grad.abs().sum() > 0, name
    # 'tensor' mode: (batch, classes, H/4, W/4) logits
    model.eval()
    with torch.no_grad():
        logits = model(inputs, mode='tensor')
    assert logits.shape == (2, 150, 16, 16)


def test_norm_params_get_no_weight_decay():
    from mmengine.optim import build_optim_wrapper
    cfg = seg_config('t')
    cfg.model = tiny_model_cfg(cfg)
    model = build_segmentor(cfg)
    wrapper = build_optim_wrapper(model, cfg.optim_wrapper)
    names = {id(p): n for n, p in model.named_parameters()}
    seen = set()
    for group in wrapper.optimizer.param_groups:
        for p in group['params']:
            name = names[id(p)]
            seen.add(name)
            expected = 0.0 if 'norm' in name else 0.01
            assert group['weight_decay'] == expected, name
    assert 'backbone.outnorm0.weight' in seen and 'backbone.layers.0.blocks.0.norm.weight' in seen


def test_make_toy_ade20k_layout_and_labels(tmp_path):
    out = tmp_path / 'toy'
    counts = make_toy_ade20k(str(out), num_train=3, num_val=2, size=48, seed=1)
    assert counts == {'training': 3, 'validation': 2}
    all_labels = set()
    for split, n in counts.items():
        imgs = sorted(glob.glob(str(out / 'images' / split / '*.jpg')))
        anns = sorted(glob.glob(str(out / 'annotations' / split / '*.png')))
        assert len(imgs) == len(anns) == n
        for img_path, ann_path in zip(imgs, anns):
            assert osp.basename(img_path)[:-4] == osp.basename(ann_path)[:-4]
            img = np.array(Image.open(img_path))
            ann = np.array(Image.open(ann_path))
            assert img.shape == (48, 48, 3) and img.dtype == np.uint8
            assert ann.shape == (48, 48) and ann.dtype == np.uint8
            labels = set(np.unique(ann).tolist())
            assert labels <= set(range(len(CLASSES) + 1))
            assert {0, 1} <= labels and len(labels) >= 3  # seams, background, an object
            all_labels |= labels
    assert len(all_labels) >= 4
    # deterministic in the seed
    again = tmp_path / 'again'
    make_toy_ade20k(str(again), num_train=3, num_val=2, size=48, seed=1)
    a = np.array(Image.open(out / 'annotations' / 'training' / 'toy_t00002.png'))
    b = np.array(Image.open(again / 'annotations' / 'training' / 'toy_t00002.png'))
    assert np.array_equal(a, b)
    with pytest.raises(ValueError, match='num_train'):
        make_toy_ade20k(str(tmp_path / 'bad'), num_train=0)


def test_demo_config_matches_toy_data():
    cfg = Config.fromfile(osp.join(ROOT, 'configs/demo/upernet_vmamba_toy.py'))
    ds = cfg.train_dataloader.dataset
    assert tuple(ds.metainfo.classes) == CLASSES and ds.reduce_zero_label
    assert cfg.model.decode_head.num_classes == len(CLASSES)
    assert cfg.model.auxiliary_head.loss_decode.loss_weight == 0.4
    assert tuple_of_ratios(cfg.tta_pipeline) == (TTA_RATIOS, [0.0, 1.0])


def test_tta_test_path_reports_miou(tmp_path):
    """tools/test.py --tta on generated data with a freshly initialised tiny model."""
    data = tmp_path / 'toy'
    make_toy_ade20k(str(data), num_train=1, num_val=2, size=40, seed=0)
    cfg_path = tmp_path / 'tiny_toy.py'
    cfg_path.write_text(
        f"_base_ = ['{ROOT}/configs/demo/upernet_vmamba_toy.py']\n"
        f"data_root = '{data}'\n"
        "train_dataloader = dict(dataset=dict(data_root=data_root))\n"
        "val_dataloader = dict(dataset=dict(data_root=data_root))\n"
        "test_dataloader = val_dataloader\n"
        "model = dict(backbone=dict(arch=dict(_delete_=True, depths=(1, 1, 1, 1), dims=8)),\n"
        "             decode_head=dict(in_channels=[8, 16, 32, 64], channels=8),\n"
        "             auxiliary_head=dict(in_channels=32, channels=8))\n"
        "img_ratios = [0.5, 1.0]\n"
        "tta_pipeline = [dict(type='LoadImageFromFile'), dict(type='TestTimeAug', transforms=[\n"
        "    [dict(type='Resize', scale_factor=r, keep_ratio=True) for r in img_ratios],\n"
        "    [dict(type='RandomFlip', prob=0., direction='horizontal'),\n"
        "     dict(type='RandomFlip', prob=1., direction='horizontal')],\n"
        "    [dict(type='LoadAnnotations')],\n"
        "    [dict(type='PackSegInputs')]])]\n")
    cfg = Config.fromfile(str(cfg_path))
    model = build_segmentor(cfg)
    ckpt = tmp_path / 'init.pth'
    torch.save({'state_dict': model.state_dict(), 'meta': {}}, ckpt)
    work = tmp_path / 'work'
    out = subprocess.run(
        [sys.executable, osp.join(ROOT, 'tools/test.py'), str(cfg_path), str(ckpt), '--tta',
         '--work-dir', str(work)],
        capture_output=True, text=True, cwd=ROOT, timeout=300)
    assert out.returncode == 0, (out.stdout + out.stderr)[-4000:]
    results = glob.glob(str(work / '*' / '*.json'))
    assert len(results) == 1, results
    metrics = json.loads(open(results[0]).read())
    assert 0.0 <= metrics['mIoU'] <= 100.0
    assert 'mIoU' in out.stdout + out.stderr
