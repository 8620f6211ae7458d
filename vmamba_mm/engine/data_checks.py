"""Checks of annotation files and images, naming the file at fault.

Used by :class:`~vmamba_mm.engine.SafeRunner` when it builds a dataset (an
annotation file it cannot load is reported with its path and, for COCO files,
the missing fields; files the dataset lists but that do not exist stop the run
before training starts) and by ``tools/data/check_dataset.py`` (every file read
and decoded, every problem listed in one pass).
"""
import json
import os.path as osp

# COCO instance annotations: what mmdet's CocoDataset and pycocotools read.
COCO_REQUIRED = {
    None: ('images', 'annotations', 'categories'),
    'images': ('id', 'file_name', 'height', 'width'),
    'annotations': ('id', 'image_id', 'category_id', 'bbox', 'area'),
    'categories': ('id', 'name'),
}
# Data-info keys holding the path of a file the pipeline reads.
PATH_KEYS = ('img_path', 'seg_map_path')


def coco_problems(path, max_per_kind=5):
    """Problems of a COCO annotation file: unreadable JSON, missing top-level
    lists, records without required fields, dangling ids, degenerate boxes.

    Returns:
        list[str]: one line per problem (at most ``max_per_kind`` records quoted
        per kind, then a count), each naming ``path``.
    """
    try:
        with open(path) as f:
            data = json.load(f)
    except (OSError, ValueError) as e:
        return [f'{path}: cannot read the annotation file as JSON ({type(e).__name__}: {e})']
    if not isinstance(data, dict):
        return [f'{path}: expected a JSON object with {list(COCO_REQUIRED[None])}, '
                f'got a {type(data).__name__}']
    missing = [k for k in COCO_REQUIRED[None] if not isinstance(data.get(k), list)]
    if missing:
        return [f'{path}: missing required COCO field(s) {missing} (a list each; the file has '
                f'{sorted(data)})']
    problems = []

    def report(kind, bad):
        if bad:
            more = f' (and {len(bad) - max_per_kind} more)' if len(bad) > max_per_kind else ''
            problems.append(f'{path}: {len(bad)} {kind}: ' + '; '.join(bad[:max_per_kind]) + more)

    for section in ('images', 'annotations', 'categories'):
        bad = []
        for i, rec in enumerate(data[section]):
            lacks = [k for k in COCO_REQUIRED[section] if not isinstance(rec, dict) or k not in rec]
            if lacks:
                bad.append(f'{section}[{i}] lacks {lacks}')
        report(f'{section} without required fields', bad)
    image_ids = {r.get('id') for r in data['images'] if isinstance(r, dict)}
    cat_ids = {r.get('id') for r in data['categories'] if isinstance(r, dict)}
    dangling, boxes = [], []
    for i, ann in enumerate(data['annotations']):
        if not isinstance(ann, dict):
            continue
        if 'image_id' in ann and ann['image_id'] not in image_ids:
            dangling.append(f'annotations[{i}] image_id {ann["image_id"]} not in images')
        if 'category_id' in ann and ann['category_id'] not in cat_ids:
            dangling.append(f'annotations[{i}] category_id {ann["category_id"]} not in categories')
        box = ann.get('bbox')
        if box is not None and not (isinstance(box, list) and len(box) == 4
                                    and all(isinstance(v, (int, float)) for v in box)
                                    and box[2] > 0 and box[3] > 0):
            boxes.append(f'annotations[{i}] bbox {box}')
    report('annotations with unknown ids', dangling)
    report('boxes that are not [x, y, w, h] with w, h > 0 (the dataset drops them)', boxes)
    return problems


def annotation_problems(dataset_cfg):
    """Problems of the annotation file a dataset config names (COCO ``.json`` files)."""
    ann = dataset_cfg.get('ann_file') or ''
    if not isinstance(ann, str) or not ann.endswith('.json'):
        return []
    path = ann if osp.isabs(ann) else osp.join(dataset_cfg.get('data_root') or '', ann)
    return coco_problems(path)


def leaf_datasets(dataset):
    """The datasets inside wrappers (RepeatDataset, ConcatDataset, ...), or ``dataset``."""
    inner = getattr(dataset, 'datasets', None)
    if isinstance(inner, (list, tuple)):
        return [leaf for d in inner for leaf in leaf_datasets(d)]
    inner = getattr(dataset, 'dataset', None)
    if inner is not None and inner is not dataset:
        return leaf_datasets(inner)
    return [dataset]


def data_files(dataset):
    """Yield ``(key, path)`` of every file the dataset's samples read (local paths)."""
    for leaf in leaf_datasets(dataset):
        if not hasattr(leaf, 'get_data_info'):
            continue
        for i in range(len(leaf)):
            info = leaf.get_data_info(i)
            for key in PATH_KEYS:
                path = info.get(key)
                if isinstance(path, str) and '://' not in path:
                    yield key, path


def missing_files(dataset, limit=10):
    """An error message listing files the dataset names that do not exist ('' if none)."""
    missing, total = [], 0
    for key, path in data_files(dataset):
        total += 1
        if not osp.isfile(path):
            missing.append(f'{key} {path}')
    if not missing:
        return ''
    more = f'\n  ... and {len(missing) - limit} more' if len(missing) > limit else ''
    return (f'{len(missing)} of the {total} files listed by the dataset do not exist:\n  ' +
            '\n  '.join(missing[:limit]) + more)
