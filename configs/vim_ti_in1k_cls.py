# Vim-Ti ImageNet-1k classifier for mmpretrain: the normed middle class token ->
# Linear head, 7,148,008 parameters as the official vim_tiny_patch16_224_bimambav2_
# final_pool_mean_abs_pos_embed_with_midclstok_div2. Recipe of the official
# vim/scripts/pt-vim-t.sh on DeiT's main.py defaults: 8 GPUs x 128 images, AdamW with
# lr 5e-4 x 1024/512 = 1e-3, weight decay 0.05, 300 epochs cosine, drop path 0.1,
# RandAugment / Mixup / CutMix / label smoothing (mmpretrain's Swin-style bases).
_base_ = [
    'mmpretrain::_base_/datasets/imagenet_bs64_swin_224.py',
    'mmpretrain::_base_/schedules/imagenet_bs1024_adamw_swin.py',
    'mmpretrain::_base_/default_runtime.py',
    './_base_/safe_training.py'
]
custom_imports = dict(imports=['vmamba_mm'], allow_failed_imports=False)

model = dict(
    type='ImageClassifier',
    backbone=dict(type='Vim', arch='tiny', img_size=224, out_type='cls_token',
                  drop_path_rate=0.1),
    neck=None,
    head=dict(
        type='LinearClsHead',
        num_classes=1000,
        in_channels=192,
        loss=dict(type='LabelSmoothLoss', label_smooth_val=0.1, mode='original'),
        init_cfg=dict(type='TruncNormal', layer='Linear', std=.02, bias=0.)),
    train_cfg=dict(augments=[dict(type='Mixup', alpha=0.8), dict(type='CutMix', alpha=1.0)]))

train_dataloader = dict(batch_size=128)  # per GPU, 8 GPUs

# Save the new checkpoint before rotating old ones out (configs/_base_/safe_training.py).
default_hooks = dict(checkpoint=dict(type='SafeCheckpointHook'))
