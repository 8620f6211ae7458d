"""Generate a small COCO-format instance-segmentation dataset of coloured shapes.

The layout is the real COCO one, so mmdet's ``CocoDataset`` and ``CocoMetric``
(pycocotools) read it unchanged::

    <out>/annotations/instances_train2017.json
    <out>/annotations/instances_val2017.json
    <out>/train2017/000000000001.jpg ...
    <out>/val2017/...

Each image (160-224 px per side, textured background) holds 1-4 non-overlapping
shapes of three classes: ``circle``, ``triangle`` and ``rectangle`` (rotated).
Colours are random and independent of the class, so the class must be read from
the shape. Every instance has a polygon mask (the same polygon that was drawn),
its pixel area, a tight ``[x, y, w, h]`` box and ``iscrowd = 0``. The output is
fully determined by ``--seed``.

Example::

    python tools/data/make_toy_coco.py --out data/toy_coco --num-train 48 --num-val 16
"""
import argparse
import json
import math
import os
import os.path as osp

import cv2
import numpy as np

CLASSES = ('circle', 'triangle', 'rectangle')
MIN_SIDE, MAX_SIDE = 160, 224  # image height / width range in pixels
MIN_OBJ, MAX_OBJ = 28, 80  # object diameter range in pixels
MAX_OBJECTS = 4


def _shape_polygon(rng, cls, cx, cy, size):
    """Vertices (K, 2) float of a ``cls`` shape of diameter ``size`` at (cx, cy)."""
    r = size / 2
    if cls == 'circle':
        t = np.linspace(0, 2 * math.pi, 32, endpoint=False)
        return np.stack([cx + r * np.cos(t), cy + r * np.sin(t)], 1)
    rot = rng.uniform(0, 2 * math.pi)
    if cls == 'triangle':  # equilateral, random rotation
        t = rot + np.array([0, 2, 4]) * math.pi / 3
        return np.stack([cx + r * np.cos(t), cy + r * np.sin(t)], 1)
    # rectangle with aspect ratio in [0.5, 1] and random rotation
    w, h = r, r * rng.uniform(0.5, 1.0)
    corners = np.array([[-w, -h], [w, -h], [w, h], [-w, h]])
    c, s = math.cos(rot), math.sin(rot)
    return corners @ np.array([[c, s], [-s, c]]) + [cx, cy]


def _background(rng, h, w):
    """Smooth random colour gradient plus mild noise (uint8 BGR)."""
    c0, c1 = rng.uniform(0, 255, 3), rng.uniform(0, 255, 3)
    t = np.linspace(0, 1, w)[None, :, None] if rng.random() < 0.5 else \
        np.linspace(0, 1, h)[:, None, None]
    img = c0 * (1 - t) + c1 * t + rng.normal(0, 12, (h, w, 3))
    return np.clip(np.broadcast_to(img, (h, w, 3)), 0, 255).astype(np.uint8)


def _distinct_colour(rng, bg_mean):
    """A random colour that stands out from the local background colour."""
    for _ in range(100):
        colour = rng.uniform(0, 255, 3)
        if np.abs(colour - bg_mean).sum() > 150:
            return colour
    return 255 - bg_mean


def make_image(rng, image_id, file_name, first_ann_id):
    """Draw one image; returns (BGR array, image record, annotation records)."""
    h, w = (int(v) for v in rng.integers(MIN_SIDE, MAX_SIDE + 1, 2))
    img = _background(rng, h, w)
    boxes, anns = [], []
    for _ in range(int(rng.integers(1, MAX_OBJECTS + 1))):
        for _attempt in range(50):  # place without overlapping earlier shapes
            cat = int(rng.integers(len(CLASSES)))
            size = rng.uniform(MIN_OBJ, MAX_OBJ)
            cx, cy = rng.uniform(size / 2 + 1, w - size / 2 - 1), rng.uniform(size / 2 + 1, h - size / 2 - 1)
            poly = _shape_polygon(rng, CLASSES[cat], cx, cy, size)
            x0, y0 = poly.min(0)
            x1, y1 = poly.max(0)
            inside = x0 >= 0 and y0 >= 0 and x1 <= w - 1 and y1 <= h - 1
            if inside and all(x0 > bx1 + 2 or x1 < bx0 - 2 or y0 > by1 + 2 or y1 < by0 - 2
                   for bx0, by0, bx1, by1 in boxes):
                break
        else:
            continue
        mask = np.zeros((h, w), np.uint8)
        cv2.fillPoly(mask, [np.round(poly).astype(np.int32)], 1)
        area = int(mask.sum())
        if area < 16:
            continue
        bg_mean = img[mask.astype(bool)].reshape(-1, 3).mean(0)
        img[mask.astype(bool)] = _distinct_colour(rng, bg_mean).astype(np.uint8)
        boxes.append((x0, y0, x1, y1))
        anns.append(dict(
            id=first_ann_id + len(anns), image_id=image_id, category_id=cat + 1,
            segmentation=[np.round(poly, 2).reshape(-1).tolist()], area=area,
            bbox=[round(float(x0), 2), round(float(y0), 2),
                  round(float(x1 - x0), 2), round(float(y1 - y0), 2)],
            iscrowd=0))
    record = dict(id=image_id, file_name=file_name, height=h, width=w)
    return img, record, anns


def make_split(out, split, num_images, rng, first_image_id):
    """Write ``<out>/<split>2017/*.jpg`` and ``annotations/instances_<split>2017.json``."""
    img_dir = osp.join(out, f'{split}2017')
    os.makedirs(img_dir, exist_ok=True)
    images, annotations = [], []
    for i in range(num_images):
        image_id = first_image_id + i
        file_name = f'{image_id:012d}.jpg'
        img, record, anns = make_image(rng, image_id, file_name, len(annotations) + 1)
        if not cv2.imwrite(osp.join(img_dir, file_name), img, [cv2.IMWRITE_JPEG_QUALITY, 95]):
            raise RuntimeError(f'could not write {osp.join(img_dir, file_name)}')
        images.append(record)
        annotations.extend(anns)
    coco = dict(
        info=dict(description='vmamba_mm toy shapes (generated by tools/data/make_toy_coco.py)'),
        licenses=[], images=images, annotations=annotations,
        categories=[dict(id=i + 1, name=name, supercategory='shape')
                    for i, name in enumerate(CLASSES)])
    ann_file = osp.join(out, 'annotations', f'instances_{split}2017.json')
    os.makedirs(osp.dirname(ann_file), exist_ok=True)
    with open(ann_file, 'w') as f:
        json.dump(coco, f)
    return ann_file, len(images), len(annotations)


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.split('\n\n')[0])
    parser.add_argument('--out', default='data/toy_coco', help='output folder (COCO layout)')
    parser.add_argument('--num-train', type=int, default=48)
    parser.add_argument('--num-val', type=int, default=16)
    parser.add_argument('--seed', type=int, default=0)
    args = parser.parse_args(argv)
    if args.num_train < 1 or args.num_val < 1:
        parser.error(f'--num-train and --num-val must be >= 1, got {args.num_train}, {args.num_val}')
    rng = np.random.default_rng(args.seed)
    for split, n, first in (('train', args.num_train, 1), ('val', args.num_val, args.num_train + 1)):
        ann_file, n_img, n_ann = make_split(args.out, split, n, rng, first)
        print(f'{split}: {n_img} images, {n_ann} instances -> {ann_file}')


if __name__ == '__main__':
    main()
