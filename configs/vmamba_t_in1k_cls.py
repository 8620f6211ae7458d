# VMamba-T ImageNet-1k classifier (mmpretrain): VMamba tiny + global average pooling
# + linear head = the official VSSM classifier (30,249,064 parameters, 4.9G FLOPs at
# 224x224, 82.6% top-1). Training recipe as the official one (Swin's: AdamW, batch
# 1024, 300 epochs, RandAugment / Mixup / CutMix / label smoothing, drop path 0.2).
_base_ = [
    'mmpretrain::_base_/datasets/imagenet_bs64_swin_224.py',
    'mmpretrain::_base_/schedules/imagenet_bs1024_adamw_swin.py',
    'mmpretrain::_base_/default_runtime.py',
    './_base_/safe_training.py',
]
custom_imports = dict(imports=['vmamba_mm'], allow_failed_imports=False)

model = dict(
    type='ImageClassifier',
    backbone=dict(type='VMamba', arch='tiny', drop_path_rate=0.2, out_indices=(3, )),
    neck=dict(type='GlobalAveragePooling'),
    head=dict(
        type='LinearClsHead',
        num_classes=1000,
        in_channels=768,
        init_cfg=dict(type='TruncNormal', layer='Linear', std=0.02, bias=0.),
        loss=dict(type='LabelSmoothLoss', label_smooth_val=0.1, mode='original'),
        cal_acc=False),
    train_cfg=dict(augments=[
        dict(type='Mixup', alpha=0.8),
        dict(type='CutMix', alpha=1.0)
    ]))

# 8 GPUs x 128 images = 1024 (the base's batch 64 is for 16 GPUs).
train_dataloader = dict(batch_size=128)

# Save the new checkpoint before rotating old ones out (configs/_base_/safe_training.py).
default_hooks = dict(checkpoint=dict(type='SafeCheckpointHook'))
