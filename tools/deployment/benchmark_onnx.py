"""ONNX export and onnxruntime CPU speed of VMamba-T and Vim-Ti classifiers.

For each model (the configs' ImageNet classifiers, random weights, 224x224,
batch 1): the export time (torch.export + lowering of the scan operators, then
the ONNX translation), the graph size (nodes by op type), the parity with
PyTorch (max relative error) and the inference time of onnxruntime (CPU) against
eager PyTorch, alternating the two round by round so that a busy machine slows
both alike (headline ratio: median of the per-round ratios). Both run with the
same number of threads. Prints a table and writes a JSON record (device,
versions, threads, machine load, shapes, times, ratios).

    python tools/deployment/benchmark_onnx.py [--rounds 11] [--threads N] [--out PATH]

Goals (a benchmark, not a test): VMamba-T exports in under a minute;
onnxruntime time <= eager PyTorch time.
"""
import argparse
import json
import logging
import os
import os.path as osp
import platform
import statistics
import sys
import time

import torch

sys.path.insert(0, osp.dirname(osp.dirname(osp.dirname(osp.abspath(__file__)))))

from vmamba_mm.benchmark import cpu_name, package_versions  # noqa: E402
from vmamba_mm.deploy import (build_model, example_input, export_onnx,  # noqa: E402
                              session_options, verify_onnx)
from vmamba_mm.runner import load_config  # noqa: E402

from mmengine.logging import MMLogger  # noqa: E402

MODELS = {'VMamba-T': 'configs/vmamba_t_in1k_cls.py', 'Vim-Ti': 'configs/vim_ti_in1k_cls.py'}
GOALS = {'export_s_VMamba-T': 60.0, 'ratio_onnxruntime_over_eager': 1.0}
REPO = osp.dirname(osp.dirname(osp.dirname(osp.abspath(__file__))))


def bench_model(name, config, size, work_dir, rounds, warmup, threads):
    import onnxruntime as ort
    module, _ = build_model(load_config(osp.join(REPO, config)))
    path = osp.join(work_dir, f'{name}.onnx')
    info = export_onnx(module, (size, size), path)
    errors = verify_onnx(path, module, (size, size))
    session = ort.InferenceSession(path, session_options(threads),
                                   providers=['CPUExecutionProvider'])
    x = example_input((size, size), seed=1)
    feed = {session.get_inputs()[0].name: x.numpy()}

    def eager():
        with torch.no_grad():
            module(x)

    def onnxruntime():
        session.run(None, feed)

    runs = {'eager': eager, 'onnxruntime': onnxruntime}
    times = {k: [] for k in runs}
    for r in range(warmup + rounds):
        for k, fn in runs.items():
            start = time.perf_counter()
            fn()
            if r >= warmup:
                times[k].append(time.perf_counter() - start)
    ratios = [o / e for o, e in zip(times['onnxruntime'], times['eager'])]
    return {
        'config': config,
        'params': sum(p.numel() for p in module.parameters()),
        'export_s': info['export_s'] + info['onnx_s'],
        'export_torch_s': info['export_s'], 'export_onnx_s': info['onnx_s'],
        'onnx_mb': os.path.getsize(path) / 2**20,
        'num_nodes': info['num_nodes'], 'nodes': info['nodes'],
        'max_relative_error': errors,
        'times_s': {k: {'median': statistics.median(v), 'min': min(v), 'all': v}
                    for k, v in times.items()},
        'ratio_onnxruntime_over_eager': statistics.median(ratios),
    }


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument('--rounds', type=int, default=11, help='timed rounds per runtime')
    parser.add_argument('--warmup', type=int, default=2, help='untimed rounds first')
    parser.add_argument('--threads', type=int, default=None,
                        help='threads of both runtimes (default: torch default)')
    parser.add_argument('--size', type=int, default=224)
    parser.add_argument('--models', nargs='+', choices=sorted(MODELS), default=list(MODELS))
    parser.add_argument('--work-dir', default='work_dirs/benchmark_onnx',
                        help='where the .onnx files go')
    parser.add_argument('--out', default='work_dirs/benchmark_onnx/benchmark_onnx.json')
    args = parser.parse_args(argv)
    # mmengine logs every parameter's initialisation at INFO level.
    MMLogger.get_current_instance().setLevel(logging.WARNING)
    if args.threads:
        torch.set_num_threads(args.threads)
    threads = torch.get_num_threads()
    torch.manual_seed(0)
    os.makedirs(args.work_dir, exist_ok=True)
    load_before = os.getloadavg()
    results = {name: bench_model(name, MODELS[name], args.size, args.work_dir, args.rounds,
                                 args.warmup, threads) for name in args.models}
    record = {
        'command': 'python tools/deployment/benchmark_onnx.py ' + ' '.join(argv or sys.argv[1:]),
        'device': {'cpu': cpu_name(), 'threads': threads, 'os_cpus': os.cpu_count(),
                   'platform': platform.platform(), 'load_avg_1_5_15min_at_start': load_before,
                   'load_avg_1_5_15min_at_end': os.getloadavg()},
        'versions': package_versions(('torch', 'onnx', 'onnxscript', 'onnxruntime', 'mmengine',
                                      'mmpretrain', 'vmamba_mm')),
        'input_shape': [1, 3, args.size, args.size],
        'rounds': args.rounds, 'warmup': args.warmup,
        'models': results,
        'goals': GOALS,
    }
    if 'VMamba-T' in results:
        record['meets_goals'] = {
            'export_s_VMamba-T': results['VMamba-T']['export_s'] <= GOALS['export_s_VMamba-T']}
    record.setdefault('meets_goals', {})['ratio_onnxruntime_over_eager'] = all(
        r['ratio_onnxruntime_over_eager'] <= GOALS['ratio_onnxruntime_over_eager']
        for r in results.values())

    print(f"CPU: {record['device']['cpu']}, {threads} threads, load {load_before[0]:.2f} -> "
          f"{record['device']['load_avg_1_5_15min_at_end'][0]:.2f}, torch {torch.__version__}, "
          f"onnxruntime {record['versions']['onnxruntime']}")
    print(f"{'model':<10} {'export (s)':>10} {'nodes':>6} {'rel. err':>9} {'eager (s)':>10} "
          f"{'ORT (s)':>8} {'ORT/eager':>9}")
    for name, r in results.items():
        print(f"{name:<10} {r['export_s']:>10.1f} {r['num_nodes']:>6} "
              f"{max(r['max_relative_error'].values()):>9.2e} "
              f"{r['times_s']['eager']['median']:>10.3f} "
              f"{r['times_s']['onnxruntime']['median']:>8.3f} "
              f"{r['ratio_onnxruntime_over_eager']:>9.2f}")
    print('(times: medians over rounds; ORT/eager: median of per-round ratios)')
    os.makedirs(osp.dirname(osp.abspath(args.out)), exist_ok=True)
    with open(args.out, 'w') as f:
        json.dump(record, f, indent=2)
    print(f'wrote {args.out}')
    return record


if __name__ == '__main__':
    main()
