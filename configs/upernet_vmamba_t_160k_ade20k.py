# UperNet + VMamba-T on ADE20K, 160k iterations, 512x512 crops.
# Official setup: MzeroMiko/VMamba segmentation/configs/vssm1/
# upernet_vssm_4xb4-160k_ade20k-512x512_tiny.py, which inherits mmseg's Swin-T UperNet
# config (dataset, AdamW lr 6e-5 wd 0.01, no decay on norms, 1500-iteration linear
# warm-up then poly decay, UPerHead 512 channels, FCN auxiliary head weight 0.4).
# Paper: 47.9 mIoU single-scale / 48.8 multi-scale, 62M parameters, 949G FLOPs (512x2048).
#
#   python tools/train.py configs/upernet_vmamba_t_160k_ade20k.py
#   python tools/test.py configs/upernet_vmamba_t_160k_ade20k.py CKPT          # single-scale
#   python tools/test.py configs/upernet_vmamba_t_160k_ade20k.py CKPT --tta    # multi-scale+flip
_base_ = [
    'mmseg::swin/swin-tiny-patch4-window7-in1k-pre_upernet_8xb2-160k_ade20k-512x512.py',
    './_base_/safe_training.py'
]
custom_imports = dict(imports=['vmamba_mm'], allow_failed_imports=False)

checkpoint_file = 'https://github.com/MzeroMiko/VMamba/releases/download/%23v2cls/vssm1_tiny_0230s_ckpt_epoch_264.pth'  # noqa: E501
model = dict(
    backbone=dict(
        _delete_=True,
        type='VMamba',
        arch='tiny',  # dims 96, depths (2, 2, 8, 2), d_state 1, ssm_ratio 1.0, mlp_ratio 4.0
        drop_path_rate=0.2,
        out_indices=(0, 1, 2, 3),
        init_cfg=dict(type='Pretrained', checkpoint=checkpoint_file)),
    decode_head=dict(in_channels=[96, 192, 384, 768], channels=512, num_classes=150),
    auxiliary_head=dict(in_channels=384, in_index=2, num_classes=150,
                        loss_decode=dict(loss_weight=0.4)))

# AdamW, betas (0.9, 0.999), lr 6e-5, weight decay 0.01 except on normalisation
# layers (the official config's only exclusion that exists in VMamba: the Swin base
# also lists absolute_pos_embed / relative_position_bias_table, which VMamba lacks).
optim_wrapper = dict(
    _delete_=True,
    type='OptimWrapper',
    optimizer=dict(type='AdamW', lr=6e-5, betas=(0.9, 0.999), weight_decay=0.01),
    paramwise_cfg=dict(custom_keys={'norm': dict(decay_mult=0.)}))

# Linear warm-up over 1500 iterations, then poly decay (power 1) to 0 at 160k
# (inherited from the Swin base, restated here because it is part of the recipe).
param_scheduler = [
    dict(type='LinearLR', start_factor=1e-6, by_epoch=False, begin=0, end=1500),
    dict(type='PolyLR', eta_min=0.0, power=1.0, begin=1500, end=160000, by_epoch=False),
]

# Batch 16 in total: 4 GPUs x 4 images (the official "4xb4"; the Swin base has 8 x 2).
train_dataloader = dict(batch_size=4)
val_dataloader = dict(batch_size=1)
test_dataloader = val_dataloader

# Multi-scale + flip evaluation (`tools/test.py ... --tta`): `tta_model` (SegTTAModel) and
# `tta_pipeline` come with the mmseg bases (default_runtime, datasets/ade20k): image
# ratios 0.5 .. 1.75 of the original size, each with and without horizontal flip,
# logits averaged.

# Save the new checkpoint before rotating old ones out (configs/_base_/safe_training.py).
default_hooks = dict(checkpoint=dict(type='SafeCheckpointHook'))
