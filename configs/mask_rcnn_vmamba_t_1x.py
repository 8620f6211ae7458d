# Mask R-CNN + FPN with a VMamba-T backbone, COCO, 1x schedule (12 epochs).
# Official setup (MzeroMiko/VMamba detection/configs/vssm1/mask_rcnn_vssm_fpn_coco_tiny.py,
# on mmdet's Swin-T 1x recipe): AdamW lr 1e-4, weight decay 0.05, no weight decay on
# norm layers, 1000-iteration linear warm-up, lr x0.1 after epochs 8 and 11,
# batch 16 = 8 GPUs x 2 images (bash tools/dist_train.sh <this config> 8).
# Paper: 47.3 box AP / 42.7 mask AP, 50M parameters (this config builds 49,755,312).
_base_ = ['mmdet::mask_rcnn/mask-rcnn_r50_fpn_1x_coco.py', './_base_/safe_training.py']

custom_imports = dict(imports=['vmamba_mm'], allow_failed_imports=False)

# ImageNet-1k classification checkpoint of the official release (VMamba-T, 82.6% top-1).
checkpoint = 'https://github.com/MzeroMiko/VMamba/releases/download/%23v2cls/vssm1_tiny_0230s_ckpt_epoch_264.pth'  # noqa
model = dict(
    backbone=dict(
        _delete_=True,
        type='VMamba',
        arch='tiny',
        drop_path_rate=0.2,
        out_indices=(0, 1, 2, 3),
        init_cfg=dict(type='Pretrained', checkpoint=checkpoint)),
    neck=dict(in_channels=[96, 192, 384, 768]))

train_dataloader = dict(batch_size=2)  # per GPU; 8 GPUs -> 16 images per iteration

max_epochs = 12
train_cfg = dict(max_epochs=max_epochs)
param_scheduler = [
    dict(type='LinearLR', start_factor=0.001, by_epoch=False, begin=0, end=1000),
    dict(type='MultiStepLR', begin=0, end=max_epochs, by_epoch=True, milestones=[8, 11], gamma=0.1)
]

# OptimWrapper (fp32) so the config also trains on CPU; tools/train.py --amp switches
# to AmpOptimWrapper on a GPU. The official paramwise_cfg also lists Swin's
# 'absolute_pos_embed' / 'relative_position_bias_table', which VMamba does not have.
optim_wrapper = dict(
    _delete_=True,
    type='OptimWrapper',
    optimizer=dict(type='AdamW', lr=0.0001, betas=(0.9, 0.999), weight_decay=0.05),
    paramwise_cfg=dict(custom_keys={'norm': dict(decay_mult=0.)}))

# The learning rate above is for 16 images per iteration (--auto-scale-lr style scaling).
auto_scale_lr = dict(enable=False, base_batch_size=16)

# Save the new checkpoint before rotating old ones out (configs/_base_/safe_training.py).
default_hooks = dict(checkpoint=dict(type='SafeCheckpointHook'))
