"""CPU speed of VMamba-T against mmdet's Swin-T, in one process.

Times batch-1 224x224 inference and batch-2 224x224 forward + backward of both
backbones (all four output stages, as FPN / UPerNet use them), alternating the two
models round by round so that a busy machine slows both alike; the headline
ratio is the median of the per-round ratios. Also records the minor page faults
of each round: on CPU, glibc hands large freed blocks back to the kernel, and a
process whose allocation pattern makes it do so pays a fault per 4 KiB page on
the next allocation (measured here at several microseconds each). Prints a table
and writes a JSON record (device, versions, shapes, times, faults, ratios).

    python tools/benchmark_backbones.py [--rounds 7] [--threads N] [--out PATH] [--compile]

``--compile`` adds ``torch.compile``d copies of both models (inductor, from a
fresh, empty compile cache): their times, the time of their first call of each
task (compilation included, minus the eager time: the cold compile time) and the
ratios compiled VMamba-T / compiled Swin-T and compiled / eager VMamba-T.

The record goes to ``work_dirs/benchmarks/backbones_cpu.json`` unless ``--out`` says
otherwise (the kept records in ``docs/benchmarks/`` are written only on purpose).

With glibc's malloc told to keep freed memory (no page faults for either model):

    MALLOC_MMAP_THRESHOLD_=1073741824 MALLOC_TRIM_THRESHOLD_=10737418240 \
        python tools/benchmark_backbones.py --out docs/benchmarks/backbones_cpu_malloc_keep.json

Targets (the official code is 2.2x / 30x slower than Swin-T on CPU): VMamba-T at
most 1.40x Swin-T's time for inference and 1.50x for training; compiled VMamba-T
inference at most 1.0x compiled Swin-T, never slower than eager VMamba-T, and
compiling no longer than Swin-T.
"""
import argparse
import json
import os
import platform
import resource
import statistics
import sys
import tempfile
import time

import torch

sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), '..'))  # a checkout
from vmamba_mm.benchmark import cpu_name, package_versions, scan_backend  # noqa: E402

TARGETS = {'inference': 1.40, 'train': 1.50}
COMPILED_TARGETS = {'inference': 1.0}


def build_models():
    from mmdet.models.backbones import SwinTransformer

    from vmamba_mm.models.vmamba import VMamba
    vmamba = VMamba('tiny', drop_path_rate=0.2)
    swin = SwinTransformer(embed_dims=96, depths=(2, 2, 6, 2), num_heads=(3, 6, 12, 24),
                           window_size=7, mlp_ratio=4, qkv_bias=True, drop_path_rate=0.2,
                           patch_norm=True, out_indices=(0, 1, 2, 3))
    return {'VMamba-T': vmamba, 'Swin-T': swin}


def make_tasks(model, infer_shape, train_shape):
    x_inf = torch.randn(*infer_shape)
    x_train = torch.randn(*train_shape)

    def inference():
        model.eval()
        with torch.no_grad():
            model(x_inf)

    def train():
        model.train()
        model.zero_grad(set_to_none=True)
        outs = model(x_train)
        sum(o.float().mean() for o in outs).backward()

    return {'inference': inference, 'train': train}


def compile_models(models):
    """``torch.compile``d copies (inductor, static shapes) compiling from an empty cache.

    ``dynamic=False``: each input shape gets its own graph. With dynamo's default
    the second shape (batch 2 for training after batch 1 for inference) recompiles
    the whole model with symbolic shapes, whose simplification took more than 15
    minutes for VMamba-T on this machine.
    """
    os.environ['TORCHINDUCTOR_CACHE_DIR'] = tempfile.mkdtemp(prefix='inductor_cold_')
    import torch._inductor.config as inductor_config
    inductor_config.fx_graph_cache = False
    torch._dynamo.config.cache_size_limit = max(torch._dynamo.config.cache_size_limit, 16)
    return {f'{name} (compiled)': torch.compile(model, dynamic=False)
            for name, model in models.items()}


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument('--rounds', type=int, default=7, help='timed rounds per task and model')
    parser.add_argument('--warmup', type=int, default=2, help='untimed rounds first')
    parser.add_argument('--threads', type=int, default=None,
                        help='torch.set_num_threads (default: torch default)')
    parser.add_argument('--size', type=int, default=224)
    parser.add_argument('--compile', action='store_true',
                        help='also time torch.compile(model) of both (inductor, cold cache)')
    parser.add_argument('--out', default='work_dirs/benchmarks/backbones_cpu.json',
                        help='JSON record path (default: %(default)s)')
    args = parser.parse_args(argv)
    if args.threads:
        torch.set_num_threads(args.threads)
    torch.manual_seed(0)
    shapes = {'inference': (1, 3, args.size, args.size), 'train': (2, 3, args.size, args.size)}

    models = build_models()
    if args.compile:
        models.update(compile_models(models))
    tasks = {name: make_tasks(m, shapes['inference'], shapes['train'])
             for name, m in models.items()}
    times = {name: {task: [] for task in shapes} for name in models}
    faults = {name: {task: [] for task in shapes} for name in models}
    first_call = {name: {} for name in models}
    for task in shapes:
        for r in range(args.warmup + args.rounds):
            for name in models:
                faults_before = resource.getrusage(resource.RUSAGE_SELF).ru_minflt
                start = time.perf_counter()
                tasks[name][task]()
                elapsed = time.perf_counter() - start
                if r == 0:
                    first_call[name][task] = elapsed
                if r >= args.warmup:
                    times[name][task].append(elapsed)
                    faults[name][task].append(
                        resource.getrusage(resource.RUSAGE_SELF).ru_minflt - faults_before)

    median = {n: {t: statistics.median(v) for t, v in d.items()} for n, d in times.items()}
    fastest = {n: {t: min(v) for t, v in d.items()} for n, d in times.items()}
    # Median of per-round ratios: each round runs both models back to back, so a
    # slow spell of a shared machine mostly cancels out.
    ratios = {t: statistics.median(a / b for a, b in zip(times['VMamba-T'][t], times['Swin-T'][t]))
              for t in shapes}
    ratios_of_medians = {t: median['VMamba-T'][t] / median['Swin-T'][t] for t in shapes}
    ratios_min = {t: fastest['VMamba-T'][t] / fastest['Swin-T'][t] for t in shapes}
    compiled = {}
    if args.compile:
        cv, cs = 'VMamba-T (compiled)', 'Swin-T (compiled)'

        def per_round(a, b, t):
            return statistics.median(x / y for x, y in zip(times[a][t], times[b][t]))

        compiled = {
            'ratio_compiled_vmamba_over_compiled_swin': {t: per_round(cv, cs, t) for t in shapes},
            'ratio_compiled_over_eager_vmamba': {t: per_round(cv, 'VMamba-T', t) for t in shapes},
            'ratio_compiled_over_eager_swin': {t: per_round(cs, 'Swin-T', t) for t in shapes},
            # First call of a task: compilation (cold cache) plus one run.
            'cold_compile_s': {n: {t: first_call[n][t] - median[n.replace(' (compiled)', '')][t]
                                   for t in shapes} for n in (cv, cs)},
            'compiled_targets': COMPILED_TARGETS,
        }
        compiled['meets_compiled_targets'] = {
            'inference_vs_compiled_swin': compiled['ratio_compiled_vmamba_over_compiled_swin'][
                'inference'] <= COMPILED_TARGETS['inference'],
            'compiled_not_slower_than_eager': all(
                r <= 1.0 for r in compiled['ratio_compiled_over_eager_vmamba'].values()),
            'compile_time_not_longer_than_swin': all(
                compiled['cold_compile_s'][cv][t] <= compiled['cold_compile_s'][cs][t]
                for t in shapes),
        }
    record = {
        'device': {'cpu': cpu_name(), 'torch_threads': torch.get_num_threads(),
                   'os_cpus': os.cpu_count(), 'platform': platform.platform(),
                   'load_avg_1_5_15min_at_end': os.getloadavg()},
        'versions': package_versions(('torch', 'mmcv', 'mmengine', 'mmdet', 'vmamba_mm')),
        'scan_backend': scan_backend('cpu'),
        'malloc_env': {k: v for k, v in os.environ.items()
                       if k.startswith('MALLOC_') or k == 'LD_PRELOAD'},
        'shapes': {t: list(s) for t, s in shapes.items()},
        'params': {n: sum(p.numel() for p in m.parameters()) for n, m in models.items()},
        'rounds': args.rounds, 'warmup': args.warmup,
        'times_s': {n: {t: {'median': median[n][t], 'min': min(v), 'all': v}
                        for t, v in d.items()} for n, d in times.items()},
        'minor_page_faults_per_round': {n: {t: {'median': statistics.median(v), 'all': v}
                                            for t, v in d.items()} for n, d in faults.items()},
        'ratio_vmamba_over_swin': ratios,
        'ratio_vmamba_over_swin_of_medians': ratios_of_medians,
        'ratio_vmamba_over_swin_fastest_rounds': ratios_min,
        'targets': TARGETS,
        'meets_targets': {t: ratios[t] <= TARGETS[t] for t in shapes},
        **compiled,
    }

    print(f"CPU: {record['device']['cpu']}, {record['device']['torch_threads']} threads, "
          f"torch {torch.__version__}")
    print(f"{'task':<10} {'shape':<18} {'VMamba-T (s)':>13} {'Swin-T (s)':>11} "
          f"{'ratio':>6} {'ratio(min)':>10} {'faults V/S':>13} {'target':>7}")
    for t in shapes:
        flt = '/'.join(f"{statistics.median(faults[n][t]):.0f}" for n in models)
        print(f"{t:<10} {str(tuple(shapes[t])):<18} {median['VMamba-T'][t]:>13.3f} "
              f"{median['Swin-T'][t]:>11.3f} {ratios[t]:>6.2f} {ratios_min[t]:>10.2f} "
              f"{flt:>13} {'<= ' + str(TARGETS[t]):>7}")
    print('(times: medians over rounds; ratio: median of per-round ratios; ratio(min): '
          'ratio of the fastest rounds; faults: median minor page faults per round)')
    if compiled:
        print(f"{'task':<10} {'VMamba-T c (s)':>15} {'Swin-T c (s)':>13} {'ratio':>6} "
              f"{'c/eager V':>10} {'c/eager S':>10} {'compile V (s)':>14} {'compile S (s)':>14}")
        for t in shapes:
            print(f"{t:<10} {median[cv][t]:>15.3f} {median[cs][t]:>13.3f} "
                  f"{compiled['ratio_compiled_vmamba_over_compiled_swin'][t]:>6.2f} "
                  f"{compiled['ratio_compiled_over_eager_vmamba'][t]:>10.2f} "
                  f"{compiled['ratio_compiled_over_eager_swin'][t]:>10.2f} "
                  f"{compiled['cold_compile_s'][cv][t]:>14.1f} "
                  f"{compiled['cold_compile_s'][cs][t]:>14.1f}")
    os.makedirs(os.path.dirname(os.path.abspath(args.out)), exist_ok=True)
    with open(args.out, 'w') as f:
        json.dump(record, f, indent=2)
    print(f'wrote {args.out}')
    return record


if __name__ == '__main__':
    sys.exit(0 if main() else 1)
