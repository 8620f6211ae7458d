"""Generate a small synthetic segmentation dataset in ADE20K's layout.

The layout and label convention are ADE20K's (as mmseg's ``ADE20KDataset`` reads it)::

    OUT/images/training/toy_00000.jpg        RGB image
    OUT/annotations/training/toy_00000.png   uint8 label map
    OUT/images/validation/...                (same for the validation split)
    OUT/annotations/validation/...

Label 0 is "other" (ignored under ``reduce_zero_label=True``), labels ``1..K``
are the classes of :data:`CLASSES` (``CLASSES[k - 1]`` is label ``k``). Each
image has a textured backdrop (``background``) and one to four objects; every
object class has its own shape *and* texture/colour family, so a small network
learns them in a few hundred iterations. A one-pixel ring around every object
is labelled 0, the way ADE20K leaves unlabelled seams between regions.

The output is a function of ``--seed`` only (numpy's PCG64 generator).

Example::

    python tools/data/make_toy_ade20k.py --out data/toy_ade --num-train 40 --num-val 10
"""
import argparse
import os
import os.path as osp

import numpy as np
from PIL import Image

CLASSES = ('background', 'disc', 'box', 'triangle', 'ring')
PALETTE = [[120, 120, 120], [220, 60, 60], [60, 90, 220], [60, 190, 80], [230, 200, 40]]
SPLITS = ('training', 'validation')


def _texture(rng, cls, yy, xx):
    """The (H, W, 3) float texture of class ``cls`` (1-based label) on a grid."""
    h, w = yy.shape
    jitter = rng.uniform(-25, 25, size=3)
    if cls == 1:  # background: smooth low-contrast grey-brown blotches
        base = np.array([120., 110., 95.]) + jitter
        wave = 12 * np.sin(xx / rng.uniform(6, 12) + rng.uniform(0, 6)) * np.cos(
            yy / rng.uniform(6, 12) + rng.uniform(0, 6))
        tex = base + wave[..., None]
    elif cls == 2:  # disc: red with bright dots
        base = np.array([200., 50., 50.]) + jitter
        dots = ((xx % 6 < 2) & (yy % 6 < 2)).astype(float)
        tex = base + 50 * dots[..., None]
    elif cls == 3:  # box: blue with horizontal stripes
        base = np.array([50., 80., 210.]) + jitter
        stripes = ((yy // 3) % 2).astype(float)
        tex = base - 50 * stripes[..., None]
    elif cls == 4:  # triangle: green checkerboard
        base = np.array([50., 180., 70.]) + jitter
        checker = (((yy // 4) + (xx // 4)) % 2).astype(float)
        tex = base - 60 * checker[..., None]
    elif cls == 5:  # ring: yellow with diagonal stripes
        base = np.array([230., 200., 40.]) + jitter
        diag = (((yy + xx) // 3) % 2).astype(float)
        tex = base - 60 * diag[..., None]
    else:
        raise ValueError(f'unknown class label {cls}; labels are 1..{len(CLASSES)}')
    return np.broadcast_to(tex, (h, w, 3))


def _shape_mask(rng, cls, yy, xx, size):
    """Boolean mask of one object of class ``cls`` at a random place and scale."""
    r = rng.uniform(0.12, 0.25) * size
    cy, cx = rng.uniform(r, size - r, size=2)
    dy, dx = yy - cy, xx - cx
    if cls == 2:  # disc
        return dy**2 + dx**2 <= r**2
    if cls == 3:  # axis-aligned box with random aspect
        ry = r * rng.uniform(0.6, 1.0)
        return (np.abs(dy) <= ry) & (np.abs(dx) <= r)
    if cls == 4:  # upright isosceles triangle
        top, bottom = cy - r, cy + r
        half_width = r * (yy - top) / (2 * r)
        return (yy >= top) & (yy <= bottom) & (np.abs(dx) <= half_width)
    if cls == 5:  # ring
        d2 = dy**2 + dx**2
        return (d2 <= r**2) & (d2 >= (0.55 * r)**2)
    raise ValueError(f'class {cls} has no shape (object labels are 2..{len(CLASSES)})')


def _dilate(mask):
    """3x3 binary dilation with numpy (no scipy needed)."""
    padded = np.pad(mask, 1)
    out = np.zeros_like(mask)
    h, w = mask.shape
    for dy in range(3):
        for dx in range(3):
            out |= padded[dy:dy + h, dx:dx + w]
    return out


def make_sample(rng, size):
    """One (image uint8 (size, size, 3), label uint8 (size, size)) pair."""
    yy, xx = np.mgrid[0:size, 0:size].astype(np.float64)
    img = _texture(rng, 1, yy, xx).copy()
    label = np.ones((size, size), np.uint8)
    for _ in range(rng.integers(1, 5)):
        cls = int(rng.integers(2, len(CLASSES) + 1))
        mask = _shape_mask(rng, cls, yy, xx, size)
        if not mask.any():
            continue
        seam = _dilate(mask) & ~mask
        img[mask] = _texture(rng, cls, yy, xx)[mask]
        label[mask] = cls
        label[seam] = 0
    img += rng.normal(0, 8, size=img.shape)
    return np.clip(img, 0, 255).astype(np.uint8), label


def make_toy_ade20k(out, num_train=40, num_val=10, size=128, seed=0):
    """Write the dataset under ``out``; return ``{split: number of samples}``."""
    if num_train < 1 or num_val < 1:
        raise ValueError(f'need at least one sample per split, got num_train={num_train}, '
                         f'num_val={num_val}')
    if size < 32:
        raise ValueError(f'size must be >= 32 pixels, got {size}')
    rng = np.random.default_rng(seed)
    counts = dict(zip(SPLITS, (num_train, num_val)))
    for split, n in counts.items():
        img_dir = osp.join(out, 'images', split)
        ann_dir = osp.join(out, 'annotations', split)
        os.makedirs(img_dir, exist_ok=True)
        os.makedirs(ann_dir, exist_ok=True)
        for i in range(n):
            img, label = make_sample(rng, size)
            name = f'toy_{split[0]}{i:05d}'
            Image.fromarray(img).save(osp.join(img_dir, name + '.jpg'), quality=95)
            Image.fromarray(label).save(osp.join(ann_dir, name + '.png'))
    return counts


def parse_args(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.split('\n')[0])
    parser.add_argument('--out', default='data/toy_ade', help='output directory')
    parser.add_argument('--num-train', type=int, default=40)
    parser.add_argument('--num-val', type=int, default=10)
    parser.add_argument('--size', type=int, default=128, help='image side in pixels')
    parser.add_argument('--seed', type=int, default=0)
    return parser.parse_args(argv)


def main(argv=None):
    args = parse_args(argv)
    counts = make_toy_ade20k(args.out, args.num_train, args.num_val, args.size, args.seed)
    print(f'wrote {counts} to {args.out} (classes: {", ".join(CLASSES)}; label 0 = other)')


if __name__ == '__main__':
    main()
