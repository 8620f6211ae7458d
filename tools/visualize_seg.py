"""Save a picture of segmentation results: image | ground truth | prediction per row.

    python tools/visualize_seg.py CONFIG CHECKPOINT --out work_dirs/demo/seg.png --num 4

Rows are the first ``--num`` images of the config's test set. Colours are the
dataset's palette; pixels with the ignore label (ADE20K's "other", label 0 under
``reduce_zero_label``) are black in the ground truth.
"""
import argparse
import os
import os.path as osp

import numpy as np
from PIL import Image, ImageDraw


def parse_args(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.split('\n')[0])
    parser.add_argument('config')
    parser.add_argument('checkpoint')
    parser.add_argument('--out', required=True, help='output PNG path')
    parser.add_argument('--num', type=int, default=4, help='number of images (rows)')
    parser.add_argument('--device', default='cpu')
    return parser.parse_args(argv)


def colorize(label, palette, ignore_index=255):
    """(H, W) class indices -> (H, W, 3) uint8; ``ignore_index`` is black."""
    out = np.zeros((*label.shape, 3), np.uint8)
    for cls, color in enumerate(palette):
        out[label == cls] = color
    out[label == ignore_index] = 0
    return out


def main(argv=None):
    args = parse_args(argv)
    from mmengine.registry import init_default_scope
    from mmseg.apis import inference_model, init_model
    from mmseg.registry import DATASETS
    for path, what in ((args.config, 'config'), (args.checkpoint, 'checkpoint')):
        if not osp.isfile(path):
            raise FileNotFoundError(f'{what} file not found: {path}')
    model = init_model(args.config, args.checkpoint, device=args.device)
    init_default_scope('mmseg')
    dataset_cfg = model.cfg.test_dataloader.dataset.copy()
    dataset_cfg.pipeline = []
    dataset = DATASETS.build(dataset_cfg)
    palette = dataset.metainfo['palette']
    reduce_zero_label = dataset_cfg.get('reduce_zero_label', False)
    rows = []
    for idx in range(min(args.num, len(dataset))):
        info = dataset.get_data_info(idx)
        img = np.array(Image.open(info['img_path']).convert('RGB'))
        gt = np.array(Image.open(info['seg_map_path'])).astype(np.int64)
        if reduce_zero_label:
            gt = np.where(gt == 0, 255, gt - 1)
        pred = inference_model(model, info['img_path']).pred_sem_seg.data[0].cpu().numpy()
        rows.append(np.concatenate([img, colorize(gt, palette), colorize(pred, palette)], 1))
    if not rows:
        raise RuntimeError(f'the test set of {args.config} is empty')
    width = max(row.shape[1] for row in rows)  # images of different sizes: pad right
    grid = np.concatenate([np.pad(r, ((0, 0), (0, width - r.shape[1]), (0, 0))) for r in rows], 0)
    header = Image.new('RGB', (grid.shape[1], 16), 'white')
    draw = ImageDraw.Draw(header)
    for i, title in enumerate(('image', 'ground truth', 'prediction')):
        draw.text((i * rows[0].shape[1] // 3 + 4, 2), title, fill='black')
    picture = Image.new('RGB', (grid.shape[1], grid.shape[0] + 16), 'white')
    picture.paste(header, (0, 0))
    picture.paste(Image.fromarray(grid), (0, 16))
    os.makedirs(osp.dirname(osp.abspath(args.out)), exist_ok=True)
    picture.save(args.out)
    print(f'saved {len(rows)} rows (image | ground truth | prediction) to {args.out}')


if __name__ == '__main__':
    main()
