# UperNet with a Vim-S backbone on ADE20K (see upernet_vim_t_160k_ade20k.py; the
# official upernet_vim_small_24_512_slide_60k.py uses UPerHead channels 384).
_base_ = ['./upernet_vim_t_160k_ade20k.py']

# ImageNet-1k checkpoint of the official release (Vim-S, 80.5% top-1, 224x224).
checkpoint = 'https://huggingface.co/hustvl/Vim-small-midclstok/resolve/main/vim_s_midclstok_80p5acc.pth'  # noqa: E501
width = 384
model = dict(
    backbone=dict(
        arch='small',
        init_cfg=dict(type='Pretrained', checkpoint=checkpoint)),
    decode_head=dict(in_channels=[width] * 4, channels=width),
    auxiliary_head=dict(in_channels=width))
