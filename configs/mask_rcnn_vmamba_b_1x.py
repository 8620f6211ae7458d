# Mask R-CNN + FPN with a VMamba-B backbone, COCO, 1x schedule; everything else as
# mask_rcnn_vmamba_t_1x.py (official: detection/configs/vssm1/mask_rcnn_vssm_fpn_coco_base.py).
# Paper: 49.2 box AP / 44.1 mask AP, 108M parameters (this config builds 107,931,376).
_base_ = ['./mask_rcnn_vmamba_t_1x.py']

checkpoint = 'https://github.com/MzeroMiko/VMamba/releases/download/%23v2cls/vssm_base_0229_ckpt_epoch_237.pth'  # noqa
model = dict(
    backbone=dict(arch='base', drop_path_rate=0.6, init_cfg=dict(checkpoint=checkpoint)),
    neck=dict(in_channels=[128, 256, 512, 1024]))
