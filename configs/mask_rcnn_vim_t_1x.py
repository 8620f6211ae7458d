# Mask R-CNN + FPN with a Vim-Ti backbone on COCO, 1x schedule (12 epochs).
# The patch-16 pyramid (strides 4/8/16/32, all 192 wide) feeds the FPN. The position
# embedding is kept at the 224x224 pre-training grid and resized (bicubic) to each
# padded batch at forward time, as ViTDet does with its absolute position embedding.
_base_ = [
    'mmdet::_base_/models/mask-rcnn_r50_fpn.py', 'mmdet::_base_/datasets/coco_instance.py',
    'mmdet::_base_/schedules/schedule_1x.py', 'mmdet::_base_/default_runtime.py',
    './_base_/safe_training.py'
]
custom_imports = dict(imports=['vmamba_mm'], allow_failed_imports=False)

# ImageNet-1k checkpoint of the official release (Vim-Ti, 76.1% top-1, 224x224).
checkpoint = 'https://huggingface.co/hustvl/Vim-tiny-midclstok/resolve/main/vim_t_midclstok_76p1acc.pth'  # noqa: E501

width = 192
model = dict(
    backbone=dict(
        _delete_=True,
        type='Vim',
        arch='tiny',
        img_size=224,
        out_type='featmap',
        out_indices=(5, 11, 17, 23),
        drop_path_rate=0.1,
        norm_cfg=dict(type='SyncBN', requires_grad=True),
        init_cfg=dict(type='Pretrained', checkpoint=checkpoint)),
    neck=dict(in_channels=[width] * 4))

optim_wrapper = dict(
    _delete_=True,
    type='OptimWrapper',
    optimizer=dict(type='AdamW', lr=1e-4, betas=(0.9, 0.999), weight_decay=0.05),
    constructor='VimLayerDecayOptimizerConstructor',
    paramwise_cfg=dict(layer_decay_rate=0.92))

# Save the new checkpoint before rotating old ones out (configs/_base_/safe_training.py).
default_hooks = dict(checkpoint=dict(type='SafeCheckpointHook'))
