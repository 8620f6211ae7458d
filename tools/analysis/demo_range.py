"""The demos' results as a measured range: run ``tools/demo.sh`` (Mask R-CNN, COCO bbox /
segm mAP) and ``tools/demo_seg.sh`` (UperNet, mIoU) several times from clean work dirs, or
collect runs already made, and write a JSON record and a table (min-max per metric)::

    python tools/analysis/demo_range.py --runs 5          # about 45 minutes on 2 cores
    python tools/analysis/demo_range.py --collect         # the runs already under --root

Run k goes to ``<root>/det_run<k>`` and ``<root>/seg_run<k>`` (default root
``work_dirs/demo_range``); the record to ``--out`` (default ``<root>/demo_runs.json``).
Training and test times come from the runs' own logs; wall times (setup included) only when
this script ran the demos.
"""
import argparse
import glob
import json
import os
import os.path as osp
import re
import shutil
import subprocess
import sys
import time
from datetime import datetime

ROOT = osp.dirname(osp.dirname(osp.dirname(osp.abspath(__file__))))
STAMP = re.compile(r'^(?:(\d{4})/)?(\d\d)/(\d\d) (\d\d):(\d\d):(\d\d) - mmengine')


def log_span(path):
    """Seconds between the first and the last timestamped line of an mmengine log."""
    stamps = []
    with open(path) as f:
        for line in f:
            m = STAMP.match(line)
            if m:
                year = int(m.group(1) or 2000)
                stamps.append(datetime(year, *(int(g) for g in m.groups()[1:])))
    if len(stamps) < 2:
        raise ValueError(f'{path}: fewer than two timestamped lines')
    return (stamps[-1] - stamps[0]).total_seconds()


def run_dirs(work):
    """(training log, [metrics json of test runs]) of one work dir."""
    train_log, metrics = None, []
    for log in sorted(glob.glob(osp.join(work, '**', '2*_*.log'), recursive=True)):
        with open(log) as f:
            text = f.read()
        if re.search(r'(Epoch|Iter)\(train\)', text):
            train_log = log
        js = log[:-4] + '.json'
        if osp.isfile(js):
            metrics.append(js)
    if train_log is None:
        raise FileNotFoundError(f'{work}: no training log (is it a demo work dir?)')
    return train_log, metrics


def seed_of(train_log):
    """The seed the training ran with (mmengine logs it; the config dumped beside the run is
    the test's, without the training's --cfg-options)."""
    with open(train_log) as f:
        for line in f:
            m = re.fullmatch(r'\s+seed: (\d+)\s*', line)
            if m:
                return int(m.group(1))
    return None


def collect_det(work):
    train_log, metrics = run_dirs(work)
    with open(metrics[-1]) as f:
        m = json.load(f)
    return {'work_dir': osp.relpath(work, ROOT), 'seed': seed_of(train_log),
            'bbox_mAP': m['coco/bbox_mAP'], 'bbox_mAP_50': m['coco/bbox_mAP_50'],
            'segm_mAP': m['coco/segm_mAP'], 'segm_mAP_50': m['coco/segm_mAP_50'],
            'train_seconds': log_span(train_log)}


def collect_seg(work):
    train_log, _ = run_dirs(work)
    out = {'work_dir': osp.relpath(work, ROOT), 'seed': seed_of(train_log),
           'train_seconds': log_span(train_log)}
    for name in ('test_single_scale', 'test_tta'):
        files = sorted(glob.glob(osp.join(work, name, '2*', '2*.json')))
        if not files:
            raise FileNotFoundError(f'{work}/{name}: no metrics (did the test step run?)')
        with open(files[-1]) as f:
            m = json.load(f)
        key = 'mIoU' if name == 'test_single_scale' else 'mIoU_tta'
        out[key] = m['mIoU']
    return out


def run_demo(script, work):
    env = dict(os.environ, WORK_DIR=work)
    start = time.time()
    with open(work + '.out', 'w') as log:
        rc = subprocess.call(['bash', script], cwd=ROOT, env=env, stdout=log,
                             stderr=subprocess.STDOUT)
    if rc != 0:
        raise RuntimeError(f'{script} failed (exit {rc}): see {work}.out')
    return time.time() - start


def span(values):
    return [min(values), max(values)]


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.split('\n\n')[0])
    mode = ap.add_mutually_exclusive_group(required=True)
    mode.add_argument('--runs', type=int, help='run each demo this many times')
    mode.add_argument('--collect', action='store_true', help='collect the runs under --root')
    ap.add_argument('--root', default='work_dirs/demo_range')
    ap.add_argument('--out', help='JSON record (default <root>/demo_runs.json)')
    args = ap.parse_args(argv)
    root = osp.join(ROOT, args.root) if not osp.isabs(args.root) else args.root
    out = args.out or osp.join(root, 'demo_runs.json')
    det, seg = [], []
    if args.runs:
        os.makedirs(root, exist_ok=True)
        for kind, script, rows, collect in (('det', 'tools/demo.sh', det, collect_det),
                                            ('seg', 'tools/demo_seg.sh', seg, collect_seg)):
            for k in range(1, args.runs + 1):
                work = osp.join(root, f'{kind}_run{k}')
                shutil.rmtree(work, ignore_errors=True)
                wall = run_demo(script, work)
                rows.append(dict(collect(work), wall_seconds=round(wall, 1)))
                print(f'[demo_range] {kind} run {k}: {rows[-1]}', flush=True)
    else:
        for work in sorted(glob.glob(osp.join(root, 'det_run*'))):
            if osp.isdir(work):
                det.append(collect_det(work))
        for work in sorted(glob.glob(osp.join(root, 'seg_run*'))):
            if osp.isdir(work):
                seg.append(collect_seg(work))
        if not det and not seg:
            sys.exit(f'no det_run* / seg_run* work dirs under {root}')
    import mmdet
    import mmseg
    import torch

    from vmamba_mm.benchmark import cpu_name
    rec = {
        'what': 'tools/demo.sh and tools/demo_seg.sh, each run from a clean work dir',
        'cpu_model': cpu_name(), 'cores': os.cpu_count(), 'torch': torch.__version__,
        'torch_threads': torch.get_num_threads(), 'mmdet': mmdet.__version__,
        'mmseg': mmseg.__version__, 'det_runs': det, 'seg_runs': seg, 'range': {},
    }
    for name, rows, keys in (('det', det, ('bbox_mAP', 'segm_mAP', 'train_seconds')),
                             ('seg', seg, ('mIoU', 'mIoU_tta', 'train_seconds'))):
        if rows:
            rec['range'][name] = {k: span([r[k] for r in rows]) for k in keys}
            if all('wall_seconds' in r for r in rows):
                rec['range'][name]['wall_seconds'] = span([r['wall_seconds'] for r in rows])
    os.makedirs(osp.dirname(osp.abspath(out)), exist_ok=True)
    with open(out, 'w') as f:
        json.dump(rec, f, indent=1)
        f.write('\n')
    print(f"{'run':<12}{'seed':>5}{'bbox mAP':>10}{'segm mAP':>10}{'mIoU':>8}{'mIoU tta':>10}"
          f"{'train s':>9}")
    for r in det:
        print(f"{osp.basename(r['work_dir']):<12}{r['seed']!s:>5}{r['bbox_mAP']:>10.3f}"
              f"{r['segm_mAP']:>10.3f}{'':>8}{'':>10}{r['train_seconds']:>9.0f}")
    for r in seg:
        print(f"{osp.basename(r['work_dir']):<12}{r['seed']!s:>5}{'':>10}{'':>10}"
              f"{r['mIoU']:>8.2f}{r['mIoU_tta']:>10.2f}{r['train_seconds']:>9.0f}")
    for name, ranges in rec['range'].items():
        print(f'{name}: ' + ', '.join(f'{k} {v[0]:g}-{v[1]:g}' for k, v in ranges.items()))
    print(f'record: {out}')
    return 0


if __name__ == '__main__':
    sys.exit(main())
