"""A tiny image classifier setup for end-to-end engine tests (mmpretrain, CPU).

:func:`make_images` writes a small two-class image folder; :func:`write_config`
a config training a tiny VMamba (or Vim) classifier on it that inherits
``configs/_base_/safe_training.py`` like every config of ours.
"""
import os
import os.path as osp

import numpy as np

ROOT = osp.dirname(osp.dirname(osp.abspath(__file__)))
SAFE_BASE = osp.join(ROOT, 'configs', '_base_', 'safe_training.py')

BACKBONES = {
    'vmamba': (dict(type='VMamba', arch=dict(depths=[1, 1], dims=8, d_state=1, mlp_ratio=2.0),
                    out_indices=(1, )), 16),
    'vim': (dict(type='Vim', arch=dict(embed_dims=16, num_layers=2, d_state=4, expand=1),
                 img_size=32, patch_size=8), 16),
}


def make_images(root, per_class=4, size=32, seed=0):
    """``root/{dark,bright}/{i}.png``: noise images, class = mean brightness."""
    import cv2
    rng = np.random.default_rng(seed)
    for label, (lo, hi) in enumerate([(0, 128), (128, 256)]):
        folder = osp.join(root, ('dark', 'bright')[label])
        os.makedirs(folder, exist_ok=True)
        for i in range(per_class):
            img = rng.integers(lo, hi, size=(size, size, 3), dtype=np.uint8)
            cv2.imwrite(osp.join(folder, f'{i}.png'), img)
    return root


def write_config(path, data_root, backbone='vmamba', max_epochs=4, batch_size=4,
                 augment=True, drop_path_rate=0.1, extra_imports=(), custom_hooks=(),
                 **overrides):
    """Write the config; ``overrides`` are appended as ``key = repr(value)``."""
    backbone_cfg, width = BACKBONES[backbone]
    backbone_cfg = dict(backbone_cfg, drop_path_rate=drop_path_rate)
    train_pipeline = [dict(type='LoadImageFromFile')]
    if augment:  # NumPy-random augmentation: a resume must restore NumPy's state too
        train_pipeline.append(dict(type='RandomFlip', prob=0.5, direction='horizontal'))
    train_pipeline.append(dict(type='PackInputs'))
    dataset = dict(type='CustomDataset', data_root=data_root, with_label=True)
    cfg = dict(
        default_scope='mmpretrain',
        custom_imports=dict(imports=['vmamba_mm', *extra_imports], allow_failed_imports=False),
        model=dict(
            type='ImageClassifier',
            data_preprocessor=dict(type='ClsDataPreprocessor', num_classes=2,
                                   mean=[127.5] * 3, std=[64.0] * 3, to_rgb=True),
            backbone=backbone_cfg,
            neck=dict(type='GlobalAveragePooling') if backbone == 'vmamba' else None,
            head=dict(type='LinearClsHead', num_classes=2, in_channels=width,
                      loss=dict(type='CrossEntropyLoss'))),
        train_dataloader=dict(
            batch_size=batch_size, num_workers=0, persistent_workers=False,
            sampler=dict(type='DefaultSampler', shuffle=True),
            dataset=dict(dataset, pipeline=train_pipeline)),
        val_dataloader=dict(
            batch_size=batch_size, num_workers=0, persistent_workers=False,
            sampler=dict(type='DefaultSampler', shuffle=False),
            dataset=dict(dataset, pipeline=[dict(type='LoadImageFromFile'),
                                            dict(type='PackInputs')])),
        val_evaluator=dict(type='Accuracy', topk=(1, )),
        test_evaluator=dict(type='Accuracy', topk=(1, )),
        optim_wrapper=dict(optimizer=dict(type='AdamW', lr=3e-3, weight_decay=0.05)),
        param_scheduler=[],
        train_cfg=dict(by_epoch=True, max_epochs=max_epochs, val_interval=1),
        val_cfg=dict(),
        test_cfg=dict(),
        default_hooks=dict(
            logger=dict(type='LoggerHook', interval=1),
            checkpoint=dict(type='SafeCheckpointHook', interval=1, max_keep_ckpts=-1)),
        log_processor=dict(window_size=1),
        randomness=dict(seed=0, deterministic=True),
        custom_hooks=[dict(type='DivergenceGuardHook'), *custom_hooks],
    )
    cfg['test_dataloader'] = cfg['val_dataloader']
    cfg.update(overrides)
    lines = [f'_base_ = [{"mmpretrain::_base_/default_runtime.py"!r}, {SAFE_BASE!r}]']
    lines += [f'{key} = {value!r}' for key, value in cfg.items()]
    with open(path, 'w') as f:
        f.write('\n'.join(lines) + '\n')
    return str(path)
