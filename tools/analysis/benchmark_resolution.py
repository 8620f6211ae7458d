"""Time and peak memory against input size: VMamba-T, Vim-Ti, Swin-T, DeiT-Ti.

Batch 1, square inputs, random weights. For every (model, size, task) point a
fresh Python process builds the backbone, runs one step at 32x32 (the one-time
initialisation of libraries and thread pools), then the first step at the size,
which measures the peak memory, then ``--warmup`` untimed steps and ``--reps``
timed ones (the median is reported):

* inference: eval mode, ``torch.no_grad()`` forward;
* train: train mode, forward + backward of the sum of the outputs' means
  (gradients zeroed first; no optimizer).

Backbones: VMamba-T (ours, four stages as FPN / UPerNet take them) against mmdet's
Swin-T (the same four stages); Vim-Ti (ours) against mmpretrain's DeiT-Ti, both
as their ImageNet classification backbones (all blocks, class token, final norm;
the position embedding resized to the input), the comparison of the Vim paper.

Peak memory, what one step adds on top of the model and its input. Being the
first step at the size, it counts the buffers that operators keep between calls
too (the selective scan's scratch memory, kept up to a size limit: measured
after other steps at the size, such a buffer would count as already there below
the limit and as the step's above it):

* CPU: glibc's ``malloc_trim(0)`` first (the freed memory that malloc keeps from
  the earlier steps goes back to the kernel, so the resident size is the live
  memory), then the process's resident-set high-water mark (``VmHWM`` in
  ``/proc/self/status``, reset to the current resident size through
  ``/proc/self/clear_refs``) after the step minus the resident size before it.
  The trim makes that step pay page faults, so it is not one of the timed ones.
* CUDA: ``torch.cuda.max_memory_allocated()`` (peak statistics reset before the
  step) minus ``torch.cuda.memory_allocated()`` before it: tensors only, not the
  caching allocator's reserve. TF32 settings are recorded.

Goal (for VMamba-T and Vim-Ti): from 512^2 up, time and memory grow by at most
1.1x the pixel ratio, i.e. for every measured size s > 512,
``(value(s) / value(512)) / (s^2 / 512^2) <= 1.1``. The growth factors of all
four models are recorded; the goal is judged for the two of ours.

Writes a JSON record (device, versions, threads, load average, sizes, times,
memory, growth factors, goal) after every point, and at the end a PNG: log-log
time and memory against pixels, with a dashed line proportional to pixels.

    python tools/analysis/benchmark_resolution.py          # CPU: 224..1024 (reduced set)
    python tools/analysis/benchmark_resolution.py --out docs/benchmarks/resolution_cpu.json
    python tools/analysis/benchmark_resolution.py --device cuda   # 224..1248
    python tools/analysis/benchmark_resolution.py --smoke  # tiny sizes, one step: checks the tool
"""
import argparse
import gc
import json
import os
import os.path as osp
import platform
import statistics
import subprocess
import sys
import time

import torch

REPO = osp.dirname(osp.dirname(osp.dirname(osp.abspath(__file__))))
sys.path.insert(0, REPO)  # run from a checkout
from vmamba_mm.benchmark import cpu_name, package_versions, scan_backend  # noqa: E402

MODELS = ('VMamba-T', 'Vim-Ti', 'Swin-T', 'DeiT-Ti')
OURS = ('VMamba-T', 'Vim-Ti')
TASKS = ('inference', 'train')
SIZES = {'cpu': (224, 384, 512, 768, 1024), 'cuda': (224, 384, 512, 640, 768, 1024, 1248)}
SMOKE_SIZES = (32, 64)
INIT_SIZE = 32  # the one-time initialisation step
GOAL_FROM = 512
GOAL_FACTOR = 1.1


def build_model(name):
    """A backbone of :data:`MODELS`, random initialisation, default drop path."""
    if name == 'VMamba-T':
        from vmamba_mm.models.vmamba import VMamba
        return VMamba('tiny', drop_path_rate=0.2, out_indices=(0, 1, 2, 3))
    if name == 'Vim-Ti':
        from vmamba_mm.models.vim import Vim
        return Vim('tiny', img_size=224, out_type='cls_token', drop_path_rate=0.1)
    if name == 'Swin-T':
        from mmdet.models.backbones import SwinTransformer
        return SwinTransformer(embed_dims=96, depths=(2, 2, 6, 2), num_heads=(3, 6, 12, 24),
                               window_size=7, drop_path_rate=0.2, out_indices=(0, 1, 2, 3))
    if name == 'DeiT-Ti':
        from mmpretrain.models.backbones import VisionTransformer
        return VisionTransformer(arch='deit-tiny', img_size=224, out_type='cls_token',
                                 drop_path_rate=0.1)
    raise ValueError(f'unknown model {name!r}; choose from {MODELS}')


def make_step(model, x, task):
    if task == 'inference':
        model.eval()

        def step():
            with torch.no_grad():
                model(x)
    else:
        model.train()

        def step():
            model.zero_grad(set_to_none=True)
            outs = model(x)
            sum(o.float().mean() for o in outs).backward()
    return step


def _status_kib(field):
    with open('/proc/self/status') as f:
        for line in f:
            if line.startswith(field + ':'):
                return int(line.split()[1])
    raise RuntimeError(f'/proc/self/status has no {field} line')


def _malloc_trim():
    import ctypes
    import ctypes.util
    libc = ctypes.CDLL(ctypes.util.find_library('c'))
    if not hasattr(libc, 'malloc_trim'):
        raise RuntimeError('CPU peak memory needs glibc (malloc_trim)')
    libc.malloc_trim(0)


def timed(step, device):
    """Seconds of one ``step`` (synchronised on CUDA)."""
    if device.type == 'cuda':
        torch.cuda.synchronize(device)
    start = time.perf_counter()
    step()
    if device.type == 'cuda':
        torch.cuda.synchronize(device)
    return time.perf_counter() - start


def peak_memory(step, device):
    """Bytes one ``step`` adds at its peak over the memory live before it (see the
    module docstring for how, on CPU and on CUDA)."""
    gc.collect()
    if device.type == 'cuda':
        torch.cuda.synchronize(device)
        torch.cuda.reset_peak_memory_stats(device)
        before = torch.cuda.memory_allocated(device)
        step()
        torch.cuda.synchronize(device)
        return torch.cuda.max_memory_allocated(device) - before
    _malloc_trim()
    with open('/proc/self/clear_refs', 'w') as f:
        f.write('5')  # VmHWM := VmRSS
    before = _status_kib('VmRSS')
    step()
    return (_status_kib('VmHWM') - before) * 1024


def run_point(name, size, task, reps, warmup, device):
    """One point, in this process: build, initialise at 32x32, measure the peak
    memory of the first step at ``size``, warm up, time; a JSON-able dict."""
    torch.manual_seed(0)
    device = torch.device(device)
    model = build_model(name).to(device)
    make_step(model, torch.randn(1, 3, INIT_SIZE, INIT_SIZE, device=device), task)()
    x = torch.randn(1, 3, size, size, device=device)
    step = make_step(model, x, task)
    peak = peak_memory(step, device)
    for _ in range(warmup):
        step()
    times = [timed(step, device) for _ in range(reps)]
    return dict(time_s=statistics.median(times), times_s=times, peak_mem_bytes=peak,
                params=sum(p.numel() for p in model.parameters()))


def spawn_point(name, size, task, args):
    """Run a point in a fresh process; a dict with the result or with 'error'."""
    cmd = [sys.executable, osp.abspath(__file__), '--worker', name, str(size), task,
           '--reps', str(args.reps), '--warmup', str(args.warmup), '--device', args.device]
    if args.threads:
        cmd += ['--threads', str(args.threads)]
    load = os.getloadavg()[0]
    try:
        proc = subprocess.run(cmd, capture_output=True, text=True, timeout=args.timeout)
    except subprocess.TimeoutExpired:
        return dict(error=f'timed out after {args.timeout} s', load_avg_1min=load)
    lines = [line for line in proc.stdout.splitlines() if line.startswith('RESULT ')]
    if proc.returncode != 0 or not lines:
        return dict(error=f'exit status {proc.returncode}: {proc.stderr.strip()[-2000:]}',
                    load_avg_1min=load)
    return dict(json.loads(lines[-1][len('RESULT '):]), load_avg_1min=load)


def growth(points, sizes, anchor):
    """value(s) / value(anchor) / (s^2 / anchor^2) for every measured s > anchor."""
    out = {}
    for key in ('time_s', 'peak_mem_bytes'):
        base = points.get(str(anchor), {}).get(key)
        out[key] = {str(s): points[str(s)][key] / base / (s / anchor) ** 2
                    for s in sizes if s > anchor and base and key in points.get(str(s), {})}
    return out


def summarise(record):
    """Fill in the growth factors and the goal verdict from the points measured."""
    sizes, anchor = record['sizes'], record['goal']['from_size']
    record['growth_over_pixel_ratio'] = {
        m: {t: growth(record['results'][m][t], sizes, anchor) for t in TASKS}
        for m in record['results']}
    verdict = {}
    for m in OURS:
        if m not in record['growth_over_pixel_ratio']:
            continue
        factors = [f for t in TASKS for d in record['growth_over_pixel_ratio'][m][t].values()
                   for f in d.values()]
        verdict[m] = dict(max_factor=max(factors) if factors else None,
                          met=bool(factors) and max(factors) <= GOAL_FACTOR)
    record['goal']['result'] = verdict


def device_info(device):
    info = dict(type=device, torch_threads=torch.get_num_threads(), os_cpus=os.cpu_count(),
                platform=platform.platform())
    info['cpu'] = cpu_name()
    if device == 'cuda':
        info.update(gpu=torch.cuda.get_device_name(0),
                    allow_tf32_matmul=torch.backends.cuda.matmul.allow_tf32,
                    allow_tf32_cudnn=torch.backends.cudnn.allow_tf32)
    return info


def plot(record, path):
    import matplotlib
    matplotlib.use('Agg')
    import matplotlib.pyplot as plt
    from matplotlib.ticker import NullLocator

    sizes = record['sizes']
    pixels = [s * s for s in sizes]
    fig, axes = plt.subplots(2, 2, figsize=(11, 8.5))
    quantities = (('time_s', 'time per image (s)', 1.0), ('peak_mem_bytes', 'peak memory (MiB)',
                                                          2.0**-20))
    for row, (key, ylabel, scale) in enumerate(quantities):
        for col, task in enumerate(TASKS):
            ax = axes[row][col]
            guide_anchor = None
            for name, by_task in record['results'].items():
                pts = [(s * s, by_task[task][str(s)][key] * scale) for s in sizes
                       if key in by_task[task].get(str(s), {})]
                pts = [(p, v) for p, v in pts if v > 0]
                if not pts:
                    continue
                style = '-o' if name in OURS else '--s'
                ax.plot(*zip(*pts), style, label=name, markersize=4)
                if guide_anchor is None or name == OURS[0]:
                    guide_anchor = pts[0]
            if guide_anchor is not None:
                p0, v0 = guide_anchor
                ax.plot(pixels, [v0 * p / p0 for p in pixels], ':', color='gray',
                        label='proportional to pixels')
            ax.set_xscale('log')
            ax.set_yscale('log')
            ax.set_xticks(pixels)
            ax.set_xticklabels([f'{s}²' for s in sizes], rotation=45)
            ax.xaxis.set_minor_locator(NullLocator())
            ax.set_xlabel('input size (batch 1)')
            ax.set_ylabel(ylabel)
            ax.set_title(f'{task}: {ylabel.split(" (")[0]}')
            ax.grid(True, which='major', alpha=0.3)
            ax.legend(fontsize=8)
    dev = record['device']
    where = dev.get('gpu') if dev['type'] == 'cuda' else f"{dev['cpu']}, {dev['torch_threads']} threads"
    fig.suptitle(f'Backbones against input size ({where})', fontsize=11)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def parse_args(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument('--device', default='cuda' if torch.cuda.is_available() else 'cpu',
                        choices=['cpu', 'cuda'])
    parser.add_argument('--sizes', type=int, nargs='+',
                        help='square input sizes (default: 224..1024 on CPU, 224..1248 on CUDA)')
    parser.add_argument('--models', nargs='+', choices=MODELS, default=list(MODELS))
    parser.add_argument('--reps', type=int, default=None,
                        help='timed steps per point (default 3 on CPU, 10 on CUDA)')
    parser.add_argument('--warmup', type=int, default=None,
                        help='untimed steps first (default 1 on CPU, 3 on CUDA)')
    parser.add_argument('--threads', type=int, default=None,
                        help='torch.set_num_threads in every worker (default: torch default)')
    parser.add_argument('--timeout', type=float, default=3600, help='seconds per point')
    parser.add_argument('--smoke', action='store_true',
                        help=f'sizes {SMOKE_SIZES}, one timed step, no warm-up (checks the tool)')
    parser.add_argument('--out', default=None,
                        help='JSON path (default work_dirs/benchmarks/resolution_<device>.json); '
                        'the PNG goes next to it')
    parser.add_argument('--worker', nargs=3, metavar=('MODEL', 'SIZE', 'TASK'),
                        help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.device == 'cuda' and not torch.cuda.is_available():
        parser.error('--device cuda: no CUDA device is available')
    cuda = args.device == 'cuda'
    if args.smoke:
        args.sizes = args.sizes or list(SMOKE_SIZES)
        args.reps = args.reps or 1
        args.warmup = 0 if args.warmup is None else args.warmup
    args.sizes = sorted(set(args.sizes or SIZES[args.device]))
    args.reps = args.reps or (10 if cuda else 3)
    args.warmup = (3 if cuda else 1) if args.warmup is None else args.warmup
    if min(args.sizes) < 16:
        parser.error(f'--sizes must be at least 16 (one Vim / DeiT patch), got {args.sizes}')
    if args.reps < 1 or args.warmup < 0:
        parser.error(f'--reps must be >= 1 and --warmup >= 0, got {args.reps} / {args.warmup}')
    if not cuda and not osp.exists('/proc/self/clear_refs'):
        parser.error('CPU peak memory needs Linux /proc/self/clear_refs (resettable VmHWM)')
    return args


def main(argv=None):
    args = parse_args(argv)
    if args.threads:
        torch.set_num_threads(args.threads)
    if args.worker:
        name, size, task = args.worker
        if task not in TASKS:
            raise ValueError(f'worker task must be one of {TASKS}, got {task!r}')
        result = run_point(name, int(size), task, args.reps, args.warmup, args.device)
        print('RESULT ' + json.dumps(result), flush=True)
        return result, 0

    out = args.out or osp.join('work_dirs', 'benchmarks', f'resolution_{args.device}.json')
    os.makedirs(osp.dirname(osp.abspath(out)), exist_ok=True)
    anchor = next((s for s in args.sizes if s >= GOAL_FROM), args.sizes[0])
    record = dict(
        tool='tools/analysis/benchmark_resolution.py', command=' '.join(sys.argv),
        device=device_info(args.device),
        versions=package_versions(('torch', 'mmengine', 'mmcv', 'mmdet', 'mmpretrain',
                                   'vmamba_mm')),
        scan_backend=scan_backend(args.device),
        load_avg_1_5_15min_at_start=os.getloadavg(), batch=1, sizes=args.sizes,
        reps=args.reps, warmup=args.warmup, timing='median of the timed steps, seconds',
        peak_memory=('first step at the size (after one at 32x32); ' + (
            'CPU: malloc_trim(0), VmHWM reset through /proc/self/clear_refs, then VmHWM '
            'after the step minus VmRSS before it; fresh process per point'
            if args.device == 'cpu' else
            'CUDA: max_memory_allocated (reset before) minus memory_allocated before the step')),
        goal=dict(statement=f'from {GOAL_FROM}^2 up, time and memory of VMamba-T and Vim-Ti grow '
                  f'by at most {GOAL_FACTOR}x the pixel ratio', from_size=anchor,
                  factor=GOAL_FACTOR),
        results={m: {t: {} for t in TASKS} for m in args.models})
    failures = 0
    print(f'{"model":<9} {"task":<9} {"size":>5} {"time (s)":>9} {"peak (MiB)":>11} {"load":>5}')
    for size in args.sizes:
        for name in args.models:
            for task in TASKS:
                res = spawn_point(name, size, task, args)
                record['results'][name][task][str(size)] = res
                if 'error' in res:
                    failures += 1
                    print(f'{name:<9} {task:<9} {size:>5} FAILED: {res["error"][-300:]}', flush=True)
                else:
                    print(f'{name:<9} {task:<9} {size:>5} {res["time_s"]:>9.3f} '
                          f'{res["peak_mem_bytes"] / 2**20:>11.1f} {res["load_avg_1min"]:>5.2f}',
                          flush=True)
                summarise(record)
                record['load_avg_1_5_15min_at_end'] = os.getloadavg()
                with open(out, 'w') as f:  # after every point: an interrupted run keeps its data
                    json.dump(record, f, indent=2)

    print(f'\ngrowth over the pixel ratio, from {anchor}^2 (goal <= {GOAL_FACTOR} for '
          f'{", ".join(OURS)}):')
    for name, by_task in record['growth_over_pixel_ratio'].items():
        for task, by_key in by_task.items():
            for key, factors in by_key.items():
                text = '  '.join(f'{s}²: {f:.2f}' for s, f in factors.items())
                print(f'  {name:<9} {task:<9} {key:<15} {text}')
    for name, verdict in record['goal']['result'].items():
        print(f'goal {name}: max factor {verdict["max_factor"]}, met: {verdict["met"]}')
    png = osp.splitext(out)[0] + '.png'
    plot(record, png)
    print(f'wrote {out} and {png}')
    if failures:
        print(f'{failures} point(s) failed; see "error" in the record', file=sys.stderr)
    return record, failures


if __name__ == '__main__':
    sys.exit(1 if main()[1] else 0)
