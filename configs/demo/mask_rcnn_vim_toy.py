# Demo: Mask R-CNN with a small Vim trained from scratch on the generated toy COCO
# (tools/data/make_toy_coco.py), on CPU. Same data, detector, schedule and COCO
# evaluation as ./mask_rcnn_vmamba_toy.py; the backbone is a 4-layer, 64-wide Vim
# (patch 16) whose blocks 0-3 feed the stride 4/8/16/32 pyramid, trained with the
# layer-wise lr decay of configs/mask_rcnn_vim_t_1x.py.
#
#   python tools/data/make_toy_coco.py --out data/toy_coco --num-train 48 --num-val 16
#   python tools/train.py configs/demo/mask_rcnn_vim_toy.py
_base_ = ['./mask_rcnn_vmamba_toy.py']

width = 64
model = dict(
    backbone=dict(
        _delete_=True,
        type='Vim',
        arch=dict(embed_dims=width, num_layers=4, d_state=4, expand=2),
        img_size=192,  # the demo image scale (_base_.image_scale)
        out_type='featmap',
        out_indices=(0, 1, 2, 3),
        drop_path_rate=0.0,
        init_cfg=None),
    neck=dict(in_channels=[width] * 4))

optim_wrapper = dict(
    _delete_=True,
    type='OptimWrapper',
    optimizer=dict(type='AdamW', lr=1e-3, betas=(0.9, 0.999), weight_decay=0.05),
    constructor='VimLayerDecayOptimizerConstructor',
    paramwise_cfg=dict(layer_decay_rate=0.9))
