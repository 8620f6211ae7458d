"""The Mask R-CNN VMamba configs: load, build, parameter counts of the paper, the
official training recipe, a CPU loss + backward, and a user config inheriting ours."""
import os.path as osp

import pytest
import torch
from mmengine.config import Config

import vmamba_mm  # noqa: F401  (registers VMamba)

ROOT = osp.dirname(osp.dirname(osp.abspath(__file__)))
CONFIGS = osp.join(ROOT, 'configs')
RELEASE = 'https://github.com/MzeroMiko/VMamba/releases/download/%23v2cls/'
# config -> (arch, drop_path_rate, FPN in_channels, ImageNet checkpoint, paper params [M])
EXPECTED = {
    'mask_rcnn_vmamba_t_1x.py': ('tiny', 0.2, [96, 192, 384, 768], 'vssm1_tiny_0230s_ckpt_epoch_264.pth', 50),
    'mask_rcnn_vmamba_s_1x.py': ('small', 0.3, [96, 192, 384, 768], 'vssm_small_0229_ckpt_epoch_222.pth', 70),
    'mask_rcnn_vmamba_b_1x.py': ('base', 0.6, [128, 256, 512, 1024], 'vssm_base_0229_ckpt_epoch_237.pth', 108),
    'mask_rcnn_vmamba_t_3x_ms.py': ('tiny', 0.2, [96, 192, 384, 768], 'vssm1_tiny_0230s_ckpt_epoch_264.pth', 50),
    'mask_rcnn_vmamba_s_3x_ms.py': ('small', 0.3, [96, 192, 384, 768], 'vssm_small_0229_ckpt_epoch_222.pth', 70),
}
# Exact counts of the built detectors (80 COCO classes), measured once:
#   T 49,755,312   S 69,654,000   B 107,931,376   (paper: 50M, 70M, 108M)
EXACT_PARAMS = {'tiny': 49_755_312, 'small': 69_654_000, 'base': 107_931_376}


def load(name):
    return Config.fromfile(osp.join(CONFIGS, name))


def build(model_cfg):
    from mmdet.registry import MODELS
    from mmdet.utils import register_all_modules
    register_all_modules(init_default_scope=True)
    return MODELS.build(model_cfg)


@pytest.mark.parametrize('name', sorted(EXPECTED))
def test_config_recipe(name):
    cfg = load(name)
    arch, dpr, in_channels, ckpt, _ = EXPECTED[name]
    assert cfg.default_scope == 'mmdet'
    assert cfg.custom_imports == dict(imports=['vmamba_mm'], allow_failed_imports=False)
    bb = cfg.model.backbone
    # _delete_ removed every ResNet key
    assert set(bb) == {'type', 'arch', 'drop_path_rate', 'out_indices', 'init_cfg'}
    assert (bb.type, bb.arch, bb.drop_path_rate, tuple(bb.out_indices)) == ('VMamba', arch, dpr, (0, 1, 2, 3))
    assert bb.init_cfg == dict(type='Pretrained', checkpoint=RELEASE + ckpt)
    assert cfg.model.neck.in_channels == in_channels
    assert cfg.model.roi_head.bbox_head.num_classes == 80
    # AdamW 1e-4, wd 0.05, no decay on norms, fp32 wrapper (AMP via train.py --amp)
    ow = cfg.optim_wrapper
    assert ow.type == 'OptimWrapper'
    assert ow.optimizer == dict(type='AdamW', lr=1e-4, betas=(0.9, 0.999), weight_decay=0.05)
    assert ow.paramwise_cfg.custom_keys == {'norm': dict(decay_mult=0.0)}
    # batch 16 = 8 GPUs x 2
    assert cfg.train_dataloader.batch_size == 2 and cfg.auto_scale_lr.base_batch_size == 16
    warmup, steps = cfg.param_scheduler
    assert (warmup.type, warmup.by_epoch, warmup.end, warmup.start_factor) == ('LinearLR', False, 1000, 0.001)
    assert steps.type == 'MultiStepLR' and steps.by_epoch and steps.gamma == 0.1
    pipeline_types = [t.type for t in cfg.train_dataloader.dataset.pipeline]
    if '3x' in name:
        assert cfg.train_cfg.max_epochs == 36 and steps.milestones == [27, 33] and steps.end == 36
        choice = cfg.train_dataloader.dataset.pipeline[pipeline_types.index('RandomChoice')]
        single, crop = choice.transforms
        assert single[0].type == 'RandomChoiceResize'
        assert [s[0] for s in single[0].scales] == list(range(480, 801, 32))
        assert all(s[1] == 1333 for s in single[0].scales)
        assert [t.type for t in crop] == ['RandomChoiceResize', 'RandomCrop', 'RandomChoiceResize']
        assert crop[1].crop_size == (384, 600) and crop[1].crop_type == 'absolute_range'
    else:
        assert cfg.train_cfg.max_epochs == 12 and steps.milestones == [8, 11] and steps.end == 12
        assert 'RandomChoice' not in pipeline_types and 'Resize' in pipeline_types


@pytest.mark.parametrize('name', ['mask_rcnn_vmamba_t_1x.py', 'mask_rcnn_vmamba_s_1x.py',
                                  'mask_rcnn_vmamba_b_1x.py'])
def test_param_count_matches_paper(name):
    cfg = load(name)
    arch, _, _, _, paper_m = EXPECTED[name]
    model = build(cfg.model)
    n = sum(p.numel() for p in model.parameters())
    assert round(n / 1e6) == paper_m, f'{name}: {n:,} parameters, paper {paper_m}M'
    assert n == EXACT_PARAMS[arch]
    assert type(model.backbone).__name__ == 'VMamba'
    assert model.backbone.dims == [c for c in cfg.model.neck.in_channels]


def test_no_weight_decay_on_norms():
    from mmengine.optim import build_optim_wrapper
    cfg = load('mask_rcnn_vmamba_t_1x.py')
    model = build(cfg.model)
    wrapper = build_optim_wrapper(model, cfg.optim_wrapper)
    decay = {}
    for group in wrapper.optimizer.param_groups:
        for p in group['params']:
            decay[id(p)] = group['weight_decay']
    norms = [m for m in model.modules() if isinstance(m, (torch.nn.LayerNorm, torch.nn.GroupNorm))]
    assert norms, 'expected LayerNorms in VMamba'
    for m in norms:
        for p in m.parameters():
            assert decay[id(p)] == 0.0
    convs = [m for m in model.backbone.modules() if isinstance(m, (torch.nn.Conv2d, torch.nn.Linear))]
    assert convs and all(decay[id(m.weight)] == 0.05 for m in convs)


def test_mask_rcnn_vmamba_loss_backward_cpu():
    """The T detector's training losses on two small images with boxes and masks."""
    from mmdet.testing import demo_mm_inputs
    cfg = load('mask_rcnn_vmamba_t_1x.py')
    cfg.model.backbone.init_cfg = None
    # fewer sampled RoIs than the 512 of the recipe: same network, a fraction of the CPU time
    cfg.model.train_cfg.rpn_proposal.max_per_img = 100
    cfg.model.train_cfg.rcnn.sampler.num = 64
    torch.manual_seed(0)
    model = build(cfg.model)
    model.init_weights()
    model.train()
    packed = demo_mm_inputs(batch_size=2, image_shapes=[(3, 96, 128), (3, 128, 96)],
                            num_items=[2, 3], num_classes=80, with_mask=True)
    data = model.data_preprocessor(packed, True)
    losses = model(**data, mode='loss')
    for key in ('loss_rpn_cls', 'loss_rpn_bbox', 'loss_cls', 'loss_bbox', 'loss_mask'):
        assert key in losses
    total, _ = model.parse_losses(losses)
    assert torch.isfinite(total) and total > 0
    total.backward()
    grads = {n: p.grad for n, p in model.backbone.named_parameters() if p.requires_grad}
    assert all(g is not None and torch.isfinite(g).all() for g in grads.values())
    # the gradient reaches the stem through the whole backbone
    stem = [g for n, g in grads.items() if n.startswith('patch_embed')]
    assert stem and any(g.abs().sum() > 0 for g in stem)


def test_user_config_inheriting_ours(tmp_path):
    user = tmp_path / 'my_mask_rcnn.py'
    user.write_text(
        f"_base_ = [{osp.join(CONFIGS, 'mask_rcnn_vmamba_t_1x.py')!r}]\n"
        "model = dict(backbone=dict(drop_path_rate=0.1, init_cfg=None),\n"
        "             roi_head=dict(bbox_head=dict(num_classes=3), mask_head=dict(num_classes=3)))\n"
        "optim_wrapper = dict(optimizer=dict(lr=2e-4))\n"
        "train_cfg = dict(max_epochs=24)\n")
    cfg = Config.fromfile(str(user))
    assert cfg.model.backbone.type == 'VMamba' and cfg.model.backbone.drop_path_rate == 0.1
    assert cfg.optim_wrapper.optimizer.lr == 2e-4 and cfg.optim_wrapper.optimizer.weight_decay == 0.05
    assert cfg.train_cfg.max_epochs == 24
    model = build(cfg.model)
    assert model.roi_head.bbox_head.fc_cls.out_features == 4  # 3 classes + background
    assert model.roi_head.mask_head.conv_logits.out_channels == 3


def test_demo_config_builds_small_model():
    cfg = load(osp.join('demo', 'mask_rcnn_vmamba_toy.py'))
    assert cfg.model.backbone.init_cfg is None  # trained from scratch, no download
    assert cfg.val_evaluator.type == 'CocoMetric' and cfg.val_evaluator.metric == ['bbox', 'segm']
    # Runs repeat on one machine (fixed seed); augmentation keeps the 48 training images from
    # being learnt by heart (docs/benchmarks/demo_runs.json: the measured range).
    assert cfg.randomness == dict(seed=0)
    assert [t.type for t in cfg.train_dataloader.dataset.pipeline] == [
        'LoadImageFromFile', 'LoadAnnotations', 'RandomResize', 'RandomFlip',
        'PhotoMetricDistortion', 'PackDetInputs']
    assert cfg.train_cfg.max_epochs == 72 and cfg.optim_wrapper.optimizer.lr == 1e-3
    model = build(cfg.model)
    n = sum(p.numel() for p in model.parameters())
    assert n < 3e6, n
    assert model.backbone.dims == [32, 64, 128, 256]
