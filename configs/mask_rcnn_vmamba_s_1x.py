# Mask R-CNN + FPN with a VMamba-S backbone, COCO, 1x schedule; everything else as
# mask_rcnn_vmamba_t_1x.py (official: detection/configs/vssm1/mask_rcnn_vssm_fpn_coco_small.py).
# Paper: 48.7 box AP / 43.7 mask AP, 70M parameters (this config builds 69,654,000).
_base_ = ['./mask_rcnn_vmamba_t_1x.py']

checkpoint = 'https://github.com/MzeroMiko/VMamba/releases/download/%23v2cls/vssm_small_0229_ckpt_epoch_222.pth'  # noqa
model = dict(
    backbone=dict(arch='small', drop_path_rate=0.3, init_cfg=dict(checkpoint=checkpoint)))
