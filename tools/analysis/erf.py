"""Effective receptive field (ERF) maps of backbones, drawn as in the VMamba paper.

For an input image ``x`` and the feature map ``y`` (C, h, w) of one backbone stage,
the ERF is the gradient of the central location's features with respect to the
input, in absolute value, summed over the input channels::

    erf = sum_c | d( sum_k relu(y[k, h // 2, w // 2]) ) / d x[c] |        # (H, W)

(the ReLU as in the VMamba / RepLKNet ERF code: without it, a stage ending in a
LayerNorm with its initial affine sums to zero over channels, and so does the
gradient), averaged over the images, divided by its maximum and drawn on a logarithmic colour
scale (``--decades`` decades below the maximum). The backbone of CONFIG (our
VMamba / Vim, or any backbone an mmdet / mmseg / mmpretrain config builds) and,
with ``--compare``, reference backbones from mmdet / mmpretrain go side by side in
one figure. Weights: random initialisation unless CHECKPOINT is given (for
CONFIG's backbone; nothing is downloaded: the configs' ``init_cfg`` is dropped).

Next to the PNG, a JSON record per model: stage, feature-map size and the
high-contribution area ratios -- for a fraction t of the total ERF, the area of
the smallest square centred on the image centre holding at least t of it,
divided by the image area (RepLKNet's ERF measure; small = local).

    python tools/analysis/erf.py configs/upernet_vmamba_t_160k_ade20k.py \\
        --random 8 --size 1024 --compare swin_t resnet50 deit_t --out work_dirs/erf.png
    python tools/analysis/erf.py configs/upernet_vmamba_t_160k_ade20k.py CKPT.pth \\
        --images data/ade/ADEChallengeData2016/images/validation --out erf_trained.png

``--stage K`` picks the K-th output of every backbone (default -1, the last). The
``--compare`` backbones give four outputs each (stages 1-4; DeiT: blocks 3, 6, 9,
12), as do our VMamba configs (``out_indices=(0, 1, 2, 3)``) and the dense Vim ones.
"""
import argparse
import glob
import json
import os
import os.path as osp
import sys

import numpy as np
import torch

sys.path.insert(0, osp.dirname(osp.dirname(osp.dirname(osp.abspath(__file__)))))  # run from a checkout

# Reference backbones (random init): name -> (scope, backbone config, label).
COMPARE_MODELS = {
    'resnet50': ('mmdet', dict(type='ResNet', depth=50, out_indices=(0, 1, 2, 3)), 'ResNet-50'),
    'convnext_t': ('mmpretrain', dict(type='ConvNeXt', arch='tiny', out_indices=(0, 1, 2, 3),
                                      gap_before_final_norm=False), 'ConvNeXt-T'),
    'swin_t': ('mmdet', dict(type='SwinTransformer', embed_dims=96, depths=(2, 2, 6, 2),
                             num_heads=(3, 6, 12, 24), window_size=7,
                             out_indices=(0, 1, 2, 3)), 'Swin-T'),
    'deit_t': ('mmpretrain', dict(type='VisionTransformer', arch='deit-tiny', img_size=224,
                                  out_type='featmap', out_indices=(2, 5, 8, 11)), 'DeiT-T'),
    'deit_s': ('mmpretrain', dict(type='VisionTransformer', arch='deit-small', img_size=224,
                                  out_type='featmap', out_indices=(2, 5, 8, 11)), 'DeiT-S'),
}
AREA_THRESHOLDS = (0.2, 0.3, 0.5, 0.99)
IMAGENET_MEAN = (123.675, 116.28, 103.53)  # RGB
IMAGENET_STD = (58.395, 57.12, 57.375)
IMAGE_EXTENSIONS = ('.jpg', '.jpeg', '.png', '.bmp')


def build_backbone(scope, backbone_cfg):
    """Build a backbone config in the registry of task library ``scope``."""
    import importlib

    from vmamba_mm.runner import register_scope
    register_scope(scope)
    return importlib.import_module(f'{scope}.registry').MODELS.build(backbone_cfg)


def config_backbone(config, checkpoint=None, cfg_options=None):
    """The backbone of an mmdet / mmseg / mmpretrain config.

    Args:
        config (str): config path.
        checkpoint (str, optional): loaded through the backbone's
            ``init_cfg=dict(type='Pretrained', ...)`` (our backbones take official
            and our own checkpoints, with or without the ``backbone.`` prefix).
            None: random initialisation (the config's ``init_cfg`` is dropped).
        cfg_options (dict, optional): config overrides.

    Returns:
        nn.Module: the backbone.
    """
    from vmamba_mm.runner import load_config, task_scope
    cfg = load_config(config, cfg_options)
    scope = task_scope(cfg)
    if 'backbone' not in cfg.get('model', {}):
        raise KeyError(f'{config}: the config has no model.backbone')
    backbone_cfg = cfg.model.backbone.copy()
    if checkpoint is not None and not osp.isfile(checkpoint):
        raise FileNotFoundError(f'checkpoint file not found: {checkpoint!r}')
    backbone_cfg['init_cfg'] = (dict(type='Pretrained', checkpoint=checkpoint)
                                if checkpoint is not None else None)
    model = build_backbone(scope, backbone_cfg)
    if checkpoint is not None:
        model.init_weights()
    return model


def load_images(directory, size):
    """Images of a directory, resized to ``size`` x ``size``, ImageNet-normalised RGB.

    Returns:
        Tensor: (N, 3, size, size) float32.
    """
    import mmcv
    if not osp.isdir(directory):
        raise FileNotFoundError(f'--images: not a directory: {directory!r}')
    paths = sorted(p for p in glob.glob(osp.join(directory, '*'))
                   if p.lower().endswith(IMAGE_EXTENSIONS))
    if not paths:
        raise FileNotFoundError(f'--images: no {"/".join(IMAGE_EXTENSIONS)} files in {directory!r}')
    mean, std = np.array(IMAGENET_MEAN), np.array(IMAGENET_STD)
    images = []
    for path in paths:
        img = mmcv.imread(path, channel_order='rgb')
        if img is None:
            raise ValueError(f'--images: cannot read {path!r} as an image')
        img = mmcv.imresize(img, (size, size)).astype(np.float64)
        images.append(torch.from_numpy(((img - mean) / std).transpose(2, 0, 1)).float())
    return torch.stack(images)


def random_images(num, size, seed=0):
    """``num`` standard-normal images (what normalised images look like in scale)."""
    if num < 1:
        raise ValueError(f'--random needs at least 1 image, got {num}')
    gen = torch.Generator().manual_seed(seed)
    return torch.randn(num, 3, size, size, generator=gen)


def stage_output(outs, stage, name):
    """The ``stage``-th output of a backbone, checked to be a (1, C, h, w) map."""
    outs = (outs, ) if isinstance(outs, torch.Tensor) else tuple(outs)
    if not -len(outs) <= stage < len(outs):
        raise IndexError(f'{name}: --stage {stage} out of range; the backbone gives '
                         f'{len(outs)} output(s)')
    out = outs[stage]
    if out.dim() != 4:
        raise ValueError(f'{name}: output {stage} has shape {tuple(out.shape)}; the ERF needs a '
                         '(B, C, h, w) feature map (use a dense detection / segmentation '
                         "config, or --cfg-options model.backbone.out_type='featmap' for Vim)")
    return out


def compute_erf(model, images, stage=-1, name='model'):
    """The ERF of the central location of one output of ``model``, averaged over images.

    Args:
        model (nn.Module): a backbone; ``model(x)`` returns a tensor or a sequence of
            (B, C, h, w) tensors. Run in eval mode.
        images (Tensor): (N, C, H, W) inputs, one at a time through the model.
        stage (int): which output (Python indexing).
        name (str): for error messages.

    Returns:
        tuple[Tensor, tuple[int, int]]: the (H, W) float64 ERF (mean over images of
        the channel-summed absolute input gradients of the ReLU-ed central features,
        summed) and the output's (h, w).
    """
    model.eval()
    device = next(model.parameters()).device
    total = torch.zeros(images.shape[-2:], dtype=torch.float64)
    for img in images:
        x = img[None].to(device).requires_grad_(True)
        out = stage_output(model(x), stage, name)
        h, w = out.shape[-2:]
        grad, = torch.autograd.grad(out[0, :, h // 2, w // 2].relu().sum(), x)
        total += grad[0].abs().sum(0).double().cpu()
    return total / len(images), (h, w)


def area_ratios(erf, thresholds=AREA_THRESHOLDS):
    """For each t: the area of the smallest square centred at (H // 2, W // 2) that holds
    at least t of the ERF's total, over the image area (RepLKNet's measure).

    Args:
        erf (Tensor): (H, W) non-negative map.
        thresholds (Sequence[float]): fractions in (0, 1].

    Returns:
        dict[float, float]: t -> area ratio in (0, 1].
    """
    erf = torch.as_tensor(erf, dtype=torch.float64)
    height, width = erf.shape
    total = float(erf.sum())
    if total <= 0:
        raise ValueError('area_ratios: the ERF is zero everywhere (no gradient reached the input)')
    cy, cx = height // 2, width // 2
    radii = range(max(cy, cx, height - 1 - cy, width - 1 - cx) + 1)
    covered = []
    for r in radii:
        y0, y1, x0, x1 = max(cy - r, 0), min(cy + r + 1, height), max(cx - r, 0), min(cx + r + 1, width)
        covered.append((float(erf[y0:y1, x0:x1].sum()) / total, (y1 - y0) * (x1 - x0)))
    ratios = {}
    for t in thresholds:
        # 1e-12: the whole image always counts as holding the total.
        area = next(a for frac, a in covered if frac >= t - 1e-12)
        ratios[t] = area / (height * width)
    return ratios


def plot(results, path, decades):
    """One heat map per model, normalised to its maximum, log colour scale."""
    import matplotlib
    matplotlib.use('Agg')
    import matplotlib.pyplot as plt
    from matplotlib.colors import LogNorm

    n = len(results)
    fig, axes = plt.subplots(1, n, figsize=(3.2 * n + 0.8, 3.6), squeeze=False)
    norm = LogNorm(vmin=10.0 ** -decades, vmax=1.0)
    for ax, res in zip(axes[0], results):
        erf = res['erf'] / res['erf'].max()
        image = ax.imshow(erf.clamp_min(10.0 ** -decades).numpy(), cmap='RdYlGn', norm=norm)
        which = 'last output' if res['stage'] == -1 else f"output {res['stage']}"
        ax.set_title(f"{res['label']}\n{which} {res['feature_size'][0]}x"
                     f"{res['feature_size'][1]}, area(99%) {res['area_ratio'][0.99]:.2f}",
                     fontsize=9)
        ax.set_xticks([])
        ax.set_yticks([])
    fig.colorbar(image, ax=list(axes[0]), fraction=0.02, pad=0.02,
                 label='|gradient| / max (log scale)')
    os.makedirs(osp.dirname(osp.abspath(path)), exist_ok=True)
    fig.savefig(path, dpi=120, bbox_inches='tight')
    plt.close(fig)


def parse_args(argv=None):
    from mmengine.config import DictAction
    parser = argparse.ArgumentParser(description='ERF maps of backbones (VMamba paper style)')
    parser.add_argument('config', help='mmdet / mmseg / mmpretrain config whose backbone to map')
    parser.add_argument('checkpoint', nargs='?', help='weights for the config\'s backbone '
                        '(default: random initialisation)')
    source = parser.add_mutually_exclusive_group()
    source.add_argument('--images', help='directory of images (jpg/png/bmp), all used')
    source.add_argument('--random', type=int, default=8, metavar='N',
                        help='N random normal images (default 8; ignored with --images)')
    parser.add_argument('--size', type=int, default=1024, help='input size (default 1024)')
    parser.add_argument('--stage', type=int, default=-1, help='backbone output index (default -1)')
    parser.add_argument('--compare', nargs='+', default=[], choices=sorted(COMPARE_MODELS),
                        help='reference backbones (random init) drawn next to CONFIG\'s')
    parser.add_argument('--out', required=True, help='PNG path; the JSON record goes next to it')
    parser.add_argument('--decades', type=float, default=3.0,
                        help='colour range: decades below the maximum (default 3)')
    parser.add_argument('--seed', type=int, default=0, help='seed of the random images and inits')
    parser.add_argument('--device', default='cuda' if torch.cuda.is_available() else 'cpu')
    parser.add_argument('--cfg-options', nargs='+', action=DictAction,
                        help='override keys of CONFIG, e.g. model.backbone.drop_path_rate=0')
    args = parser.parse_args(argv)
    if not osp.isfile(args.config):
        parser.error(f'config file not found: {args.config}')
    if args.size < 16:
        parser.error(f'--size must be at least 16, got {args.size}')
    if not args.out.lower().endswith('.png'):
        parser.error(f'--out must be a .png path, got {args.out}')
    if args.decades <= 0:
        parser.error(f'--decades must be positive, got {args.decades}')
    return args


def main(argv=None):
    args = parse_args(argv)
    torch.manual_seed(args.seed)
    if args.images:
        images, source = load_images(args.images, args.size), f'images in {args.images}'
    else:
        images, source = random_images(args.random, args.size, args.seed), \
            f'{args.random} random normal images (seed {args.seed})'
    name = osp.splitext(osp.basename(args.config))[0]
    models = [(name, name + (' (checkpoint)' if args.checkpoint else ' (random init)'),
               lambda: config_backbone(args.config, args.checkpoint, args.cfg_options))]
    for key in args.compare:
        scope, cfg, label = COMPARE_MODELS[key]
        models.append((key, label + ' (random init)', lambda s=scope, c=cfg: build_backbone(s, c)))

    results = []
    for key, label, build in models:
        model = build().to(args.device)
        erf, feature_size = compute_erf(model, images, args.stage, key)
        del model
        ratios = area_ratios(erf)
        results.append(dict(name=key, label=label, stage=args.stage, feature_size=list(feature_size),
                            erf=erf, area_ratio=ratios))
        print(f'{label:<40} output {args.stage} {feature_size[0]}x{feature_size[1]}  area ratio '
              + '  '.join(f'{int(t * 100)}%: {r:.4f}' for t, r in ratios.items()), flush=True)

    plot(results, args.out, args.decades)
    record = dict(config=args.config, checkpoint=args.checkpoint, input_size=[args.size] * 2,
                  images=source, num_images=len(images), device=args.device,
                  definition='mean over images of sum_c |d(sum_k relu(y[k, h//2, w//2])) / d x[c]|',
                  models=[{k: v for k, v in r.items() if k != 'erf'} for r in results])
    json_path = osp.splitext(args.out)[0] + '.json'
    with open(json_path, 'w') as f:
        json.dump(record, f, indent=2)
    print(f'wrote {args.out} and {json_path}')
    return results


if __name__ == '__main__':
    main()
