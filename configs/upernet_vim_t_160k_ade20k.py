# UperNet with a Vim-Ti backbone on ADE20K, 512x512 crops, 160k iterations.
# Model as the official hustvl/Vim seg/configs/vim/upernet/upernet_vim_tiny_24_512_slide_60k.py
# (out_indices 5/11/17/23, patch-16 pyramid, UPerHead channels = width, FCN aux head,
# layer-wise lr decay 0.92); schedule as the Vim paper's ADE20K setting (AdamW, lr 6e-5,
# weight decay 0.01, batch 16, 1500 warm-up iterations, linear decay, 160k iterations).
_base_ = [
    'mmseg::_base_/models/upernet_r50.py', 'mmseg::_base_/datasets/ade20k.py',
    'mmseg::_base_/default_runtime.py', 'mmseg::_base_/schedules/schedule_160k.py',
    './_base_/safe_training.py'
]
custom_imports = dict(imports=['vmamba_mm'], allow_failed_imports=False)

# ImageNet-1k checkpoint of the official release (Vim-Ti, 76.1% top-1, 224x224).
checkpoint = 'https://huggingface.co/hustvl/Vim-tiny-midclstok/resolve/main/vim_t_midclstok_76p1acc.pth'  # noqa: E501

crop_size = (512, 512)
norm_cfg = dict(type='SyncBN', requires_grad=True)
width = 192
data_preprocessor = dict(size=crop_size)
model = dict(
    data_preprocessor=data_preprocessor,
    pretrained=None,
    backbone=dict(
        _delete_=True,
        type='Vim',
        arch='tiny',
        img_size=512,
        out_type='featmap',
        out_indices=(5, 11, 17, 23),
        drop_path_rate=0.1,
        norm_cfg=norm_cfg,
        # the checkpoint's 14x14 position embedding is resized to 32x32 on load
        init_cfg=dict(type='Pretrained', checkpoint=checkpoint)),
    decode_head=dict(in_channels=[width] * 4, channels=width, num_classes=150, norm_cfg=norm_cfg),
    auxiliary_head=dict(in_channels=width, num_classes=150, norm_cfg=norm_cfg))

optim_wrapper = dict(
    _delete_=True,
    type='OptimWrapper',
    optimizer=dict(type='AdamW', lr=6e-5, betas=(0.9, 0.999), weight_decay=0.01),
    constructor='VimLayerDecayOptimizerConstructor',
    paramwise_cfg=dict(layer_decay_rate=0.92))

param_scheduler = [
    dict(type='LinearLR', start_factor=1e-6, by_epoch=False, begin=0, end=1500),
    dict(type='PolyLR', eta_min=0.0, power=1.0, begin=1500, end=160000, by_epoch=False)
]

# 8 GPUs x 2 images = batch 16
train_dataloader = dict(batch_size=2)
val_dataloader = dict(batch_size=1)
test_dataloader = val_dataloader

# Save the new checkpoint before rotating old ones out (configs/_base_/safe_training.py).
default_hooks = dict(checkpoint=dict(type='SafeCheckpointHook'))
