# UperNet + VMamba-S on ADE20K, 160k iterations, 512x512 crops (official:
# upernet_vssm_4xb4-160k_ade20k-512x512_small.py). Everything but the backbone is
# the VMamba-T recipe. Paper: 50.6 / 51.2 mIoU (single / multi-scale), 82M, 1028G.
_base_ = ['./upernet_vmamba_t_160k_ade20k.py']

checkpoint_file = 'https://github.com/MzeroMiko/VMamba/releases/download/%23v2cls/vssm_small_0229_ckpt_epoch_222.pth'  # noqa: E501
model = dict(
    backbone=dict(
        arch='small',  # dims 96, depths (2, 2, 15, 2), d_state 1, ssm_ratio 2.0
        drop_path_rate=0.3,
        init_cfg=dict(type='Pretrained', checkpoint=checkpoint_file)),
    decode_head=dict(in_channels=[96, 192, 384, 768]),
    auxiliary_head=dict(in_channels=384))
