# Demo: UperNet with a small Vim trained from scratch on the generated toy ADE20K
# (tools/data/make_toy_ade20k.py), on CPU. Same data, heads, schedule and TTA as
# ./upernet_vmamba_toy.py; the backbone is a 4-layer, 64-wide Vim (patch 16) whose
# blocks 0-3 feed the stride 4/8/16/32 pyramid, with the UPerHead / FCN aux head
# widths and layer-wise lr decay of configs/upernet_vim_t_160k_ade20k.py.
#
#   python tools/data/make_toy_ade20k.py --out data/toy_ade
#   python tools/train.py configs/demo/upernet_vim_toy.py
_base_ = ['./upernet_vmamba_toy.py']

width = 64
model = dict(
    backbone=dict(
        _delete_=True,
        type='Vim',
        arch=dict(embed_dims=width, num_layers=4, d_state=4, expand=2),
        img_size=96,  # the demo crop size (_base_.crop_size)
        out_type='featmap',
        out_indices=(0, 1, 2, 3),
        drop_path_rate=0.0),
    decode_head=dict(in_channels=[width] * 4, channels=width),
    auxiliary_head=dict(in_channels=width))

optim_wrapper = dict(
    _delete_=True,
    type='OptimWrapper',
    optimizer=dict(type='AdamW', lr=1e-3, betas=(0.9, 0.999), weight_decay=0.01),
    constructor='VimLayerDecayOptimizerConstructor',
    paramwise_cfg=dict(layer_decay_rate=0.9))
