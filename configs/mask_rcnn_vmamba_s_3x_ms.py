# Mask R-CNN + FPN with a VMamba-S backbone, COCO, 3x multi-scale schedule; everything
# else as mask_rcnn_vmamba_t_3x_ms.py
# (official: detection/configs/vssm1/mask_rcnn_vssm_fpn_coco_small_ms_3x.py).
# Paper: 49.9 box AP / 44.2 mask AP, 70M parameters.
_base_ = ['./mask_rcnn_vmamba_t_3x_ms.py']

checkpoint = 'https://github.com/MzeroMiko/VMamba/releases/download/%23v2cls/vssm_small_0229_ckpt_epoch_222.pth'  # noqa
model = dict(
    backbone=dict(arch='small', drop_path_rate=0.3, init_cfg=dict(checkpoint=checkpoint)))
