"""Read every annotation and image of a config's datasets and list every problem.

Run it before a long training run: it builds the train / val / test datasets of
CONFIG, reads and decodes every image (and segmentation map) they list, checks
COCO annotation files for missing fields, unknown ids and degenerate boxes, and
compares decoded image sizes with the annotated ones. All problems are listed in
one pass; the exit status is 1 if there is any, 0 otherwise.

Examples::

    python tools/data/check_dataset.py configs/demo/mask_rcnn_vmamba_toy.py
    python tools/data/check_dataset.py CONFIG --splits train \\
        --cfg-options train_dataloader.dataset.data_root=/data/coco/
"""
import argparse
import importlib
import os.path as osp
import sys

sys.path.insert(0, osp.dirname(osp.dirname(osp.dirname(osp.abspath(__file__)))))

from vmamba_mm.engine.data_checks import (annotation_problems, data_files,  # noqa: E402
                                          leaf_datasets)
from vmamba_mm.runner import load_config, register_scope, task_scope  # noqa: E402

SPLITS = ('train', 'val', 'test')


def parse_args(argv=None):
    from mmengine.config import DictAction
    parser = argparse.ArgumentParser(description='Check every annotation and image of a config')
    parser.add_argument('config', help='config file path')
    parser.add_argument('--splits', nargs='+', choices=SPLITS, default=list(SPLITS),
                        help='which dataloaders to check (default: all three)')
    parser.add_argument('--cfg-options', nargs='+', action=DictAction,
                        help='override config keys, e.g. train_dataloader.dataset.data_root=...')
    return parser.parse_args(argv)


def _dataset_cfgs(cfg):
    """The dataset config and its wrapped ones (outermost first)."""
    out = [cfg]
    while isinstance(out[-1].get('dataset'), dict):
        out.append(out[-1]['dataset'])
    return out + [d for c in out for d in (c.get('datasets') or []) if isinstance(d, dict)]


def _file_problems(dataset, seen):
    """Read and decode every file of ``dataset`` (not in ``seen``); size checks."""
    import mmcv
    from mmengine import fileio
    problems, count = [], 0
    infos = {}
    for leaf in leaf_datasets(dataset):
        for i in range(len(leaf)) if hasattr(leaf, 'get_data_info') else ():
            info = leaf.get_data_info(i)
            if isinstance(info.get('img_path'), str):
                infos[info['img_path']] = info
    for key, path in data_files(dataset):
        if path in seen:
            continue
        seen.add(path)
        count += 1
        if not osp.isfile(path):
            problems.append(f'{key} {path}: file does not exist')
            continue
        try:
            img = mmcv.imfrombytes(fileio.get(path), flag='unchanged')
        except Exception as e:  # noqa: BLE001 - any decoder failure is this file's problem
            problems.append(f'{key} {path}: cannot decode ({type(e).__name__}: {e})')
            continue
        if img is None or img.size == 0:
            problems.append(f'{key} {path}: cannot decode (not an image, or truncated)')
            continue
        info = infos.get(path, {}) if key == 'img_path' else {}
        size = (info.get('height'), info.get('width'))
        if None not in size and tuple(img.shape[:2]) != size:
            problems.append(f'{key} {path}: image is {img.shape[1]}x{img.shape[0]} (WxH), the '
                            f'annotation says {size[1]}x{size[0]}')
    return problems, count


def check(cfg, splits):
    """All problems of the config's datasets, and a per-split count of checked files."""
    scope = task_scope(cfg)
    register_scope(scope)
    datasets = importlib.import_module(f'{scope}.registry').DATASETS
    problems, counts, seen_ann, seen_files, seen_cfgs = [], {}, set(), set(), set()
    for split in splits:
        loader = cfg.get(f'{split}_dataloader')
        if not loader or not isinstance(loader.get('dataset'), dict):
            continue
        dataset_cfg = loader['dataset']
        if repr(dataset_cfg) in seen_cfgs:  # e.g. test_dataloader = val_dataloader
            continue
        seen_cfgs.add(repr(dataset_cfg))
        for sub in _dataset_cfgs(dataset_cfg):
            key = (sub.get('data_root'), sub.get('ann_file'))
            if key not in seen_ann:
                seen_ann.add(key)
                problems += [f'[{split}] {p}' for p in annotation_problems(sub)]
        try:
            dataset = datasets.build(dataset_cfg)
        except Exception as e:  # noqa: BLE001 - reported, and the other splits still checked
            problems.append(f'[{split}] cannot build {dataset_cfg.get("type")} '
                            f'(data_root={dataset_cfg.get("data_root")!r}, '
                            f'ann_file={dataset_cfg.get("ann_file")!r}): {type(e).__name__}: {e}')
            continue
        found, counts[split] = _file_problems(dataset, seen_files)
        problems += [f'[{split}] {p}' for p in found]
    return problems, counts


def main(argv=None):
    args = parse_args(argv)
    try:
        cfg = load_config(args.config, args.cfg_options)
    except FileNotFoundError as e:
        raise SystemExit(f'check_dataset.py: error: {e}')
    problems, counts = check(cfg, args.splits)
    checked = ', '.join(f'{s}: {n} files' for s, n in counts.items()) or 'no dataset built'
    if problems:
        print(f'{len(problems)} problems ({checked} read):')
        print('\n'.join(f'  {p}' for p in problems))
        return 1
    print(f'OK: {checked} read, no problem found')
    return 0


if __name__ == '__main__':
    sys.exit(main())
