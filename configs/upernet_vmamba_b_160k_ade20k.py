# UperNet + VMamba-B on ADE20K, 160k iterations, 512x512 crops (official:
# upernet_vssm_4xb4-160k_ade20k-512x512_base.py). Everything but the backbone is
# the VMamba-T recipe. Paper: 51.0 / 51.6 mIoU (single / multi-scale), 122M, 1170G.
_base_ = ['./upernet_vmamba_t_160k_ade20k.py']

checkpoint_file = 'https://github.com/MzeroMiko/VMamba/releases/download/%23v2cls/vssm_base_0229_ckpt_epoch_237.pth'  # noqa: E501
model = dict(
    backbone=dict(
        arch='base',  # dims 128, depths (2, 2, 15, 2), d_state 1, ssm_ratio 2.0
        drop_path_rate=0.6,
        init_cfg=dict(type='Pretrained', checkpoint=checkpoint_file)),
    decode_head=dict(in_channels=[128, 256, 512, 1024]),
    auxiliary_head=dict(in_channels=512))
