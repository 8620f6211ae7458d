# Demo: Mask R-CNN with a small VMamba trained from scratch on the generated toy COCO
# (tools/data/make_toy_coco.py: circles / triangles / rectangles with polygon masks),
# on CPU in a few minutes. Same detector, optimizer family and COCO evaluation (bbox +
# segm mAP with pycocotools) as configs/mask_rcnn_vmamba_t_1x.py, scaled down: a
# 4-stage VMamba with dims 32 and depths [1, 1, 2, 1], 64-channel FPN and heads,
# 192-px images (scale-jittered and flipped in training), batch 4, lr 1e-3 and 72 epochs
# (no pretraining), seed 0.
#
#   bash tools/demo.sh            # data, train, test, picture of the predictions
#   SEED=3 bash tools/demo.sh     # the same with another seed
_base_ = ['../mask_rcnn_vmamba_t_1x.py']

data_root = 'data/toy_coco/'
classes = ('circle', 'triangle', 'rectangle')
metainfo = dict(classes=classes, palette=[(220, 60, 60), (60, 190, 80), (60, 90, 220)])
image_scale = (192, 192)
channels = 64  # FPN / RPN / RoI head width (256 in the full model)

model = dict(
    backbone=dict(
        arch=dict(_delete_=True, depths=(1, 1, 2, 1), dims=32, d_state=1, ssm_ratio=1.0, mlp_ratio=2.0),
        drop_path_rate=0.0,
        init_cfg=None),
    neck=dict(in_channels=[32, 64, 128, 256], out_channels=channels),
    rpn_head=dict(in_channels=channels, feat_channels=channels),
    roi_head=dict(
        bbox_roi_extractor=dict(out_channels=channels),
        bbox_head=dict(in_channels=channels, fc_out_channels=256, num_classes=len(classes)),
        mask_roi_extractor=dict(out_channels=channels),
        mask_head=dict(in_channels=channels, conv_out_channels=channels,
                       num_classes=len(classes))),
    # fewer sampled proposals: small images with 1-4 objects each
    train_cfg=dict(
        rpn_proposal=dict(nms_pre=1000, max_per_img=200),
        rcnn=dict(sampler=dict(num=64))),
    test_cfg=dict(rpn=dict(nms_pre=500, max_per_img=300)))

# 48 training images are few: without augmentation the model learns them by heart and the
# validation mAP depends on the seed. Flips in every direction, scale jitter and colour
# changes keep the labels (the shapes are rotated at random, their colours do not depend on
# the class) and make the result far less seed-dependent.
train_pipeline = [
    dict(type='LoadImageFromFile'),
    dict(type='LoadAnnotations', with_bbox=True, with_mask=True),
    dict(type='RandomResize', scale=image_scale, ratio_range=(0.75, 1.25), keep_ratio=True),
    dict(type='RandomFlip', prob=0.75, direction=['horizontal', 'vertical', 'diagonal']),
    dict(type='PhotoMetricDistortion'),
    dict(type='PackDetInputs'),
]
test_pipeline = [
    dict(type='LoadImageFromFile'),
    dict(type='Resize', scale=image_scale, keep_ratio=True),
    dict(type='LoadAnnotations', with_bbox=True, with_mask=True),
    dict(type='PackDetInputs',
         meta_keys=('img_id', 'img_path', 'ori_shape', 'img_shape', 'scale_factor')),
]
train_dataloader = dict(
    batch_size=4,
    num_workers=0,
    persistent_workers=False,
    dataset=dict(
        data_root=data_root,
        metainfo=metainfo,
        ann_file='annotations/instances_train2017.json',
        data_prefix=dict(img='train2017/'),
        pipeline=train_pipeline))
val_dataloader = dict(
    batch_size=4,
    num_workers=0,
    persistent_workers=False,
    dataset=dict(
        data_root=data_root,
        metainfo=metainfo,
        ann_file='annotations/instances_val2017.json',
        data_prefix=dict(img='val2017/'),
        pipeline=test_pipeline))
test_dataloader = val_dataloader
val_evaluator = dict(ann_file=data_root + 'annotations/instances_val2017.json',
                     metric=['bbox', 'segm'])
test_evaluator = val_evaluator

# 72 epochs x 12 iterations: 6-9 minutes on 2 CPU cores (0.4-0.6 s / iteration), lr 1e-3
# with 24 epochs at the lower rates. The seed is fixed, so that runs on one machine repeat;
# SEED=N bash tools/demo.sh trains with another. Measured over runs and seeds:
# docs/benchmarks/demo_runs.json (bbox mAP 0.408-0.471, segm mAP 0.492-0.551).
max_epochs = 72
train_cfg = dict(max_epochs=max_epochs, val_interval=max_epochs)
param_scheduler = [
    dict(type='LinearLR', start_factor=0.01, by_epoch=False, begin=0, end=30),
    dict(type='MultiStepLR', begin=0, end=max_epochs, by_epoch=True, milestones=[48, 66],
         gamma=0.1)
]
randomness = dict(seed=0)
optim_wrapper = dict(optimizer=dict(lr=1e-3))
auto_scale_lr = dict(base_batch_size=4)
default_hooks = dict(
    logger=dict(interval=5),
    checkpoint=dict(interval=max_epochs, max_keep_ckpts=1))
