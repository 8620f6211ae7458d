"""Where one Vim layer spends its time on CPU: operator by operator.

Runs one Vim block (add -> RMSNorm -> bidirectional Mamba mixer) of the given width
on the token sequence of an image size (``(size / 16)^2 + 1`` tokens, batch 1)
under ``torch.profiler``, inference (no grad) and a training step (forward +
backward), and prints / writes the self CPU time of each operator per layer call.

Examples::

    python tools/analysis/profile_vim_layer.py --size 1024 --threads 1
    python tools/analysis/profile_vim_layer.py --size 1024 --threads 1 \\
        --out docs/benchmarks/vim_layer_profile_cpu.json

Writes ``work_dirs/benchmarks/vim_layer_profile_cpu.json`` unless ``--out`` says otherwise.
"""
import argparse
import json
import os
import os.path as osp
import sys
from collections import defaultdict

import torch

sys.path.insert(0, osp.join(osp.dirname(osp.abspath(__file__)), '..', '..'))
from vmamba_mm.benchmark import cpu_name, package_versions, scan_backend  # noqa: E402
from vmamba_mm.models.vim import Block  # noqa: E402


def profile(step, reps):
    """Self CPU milliseconds per call of ``step``, by operator name, and the total."""
    step()  # warm-up
    with torch.profiler.profile(activities=[torch.profiler.ProfilerActivity.CPU]) as prof:
        for _ in range(reps):
            step()
    per_op = defaultdict(float)
    for event in prof.key_averages():
        per_op[event.key] += event.self_cpu_time_total / 1e3 / reps
    per_op = {k: v for k, v in sorted(per_op.items(), key=lambda kv: -kv[1]) if v >= 0.01}
    return per_op, sum(per_op.values())


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.split('\n')[0])
    parser.add_argument('--size', type=int, default=1024, help='image side (patch 16)')
    parser.add_argument('--dim', type=int, default=192, help='token width (Vim-Ti: 192)')
    parser.add_argument('--threads', type=int, default=1)
    parser.add_argument('--reps', type=int, default=3)
    parser.add_argument('--top', type=int, default=12, help='operators printed per task')
    parser.add_argument('--out', default=osp.join('work_dirs', 'benchmarks',
                                                  'vim_layer_profile_cpu.json'))
    args = parser.parse_args(argv)
    torch.set_num_threads(args.threads)
    torch.manual_seed(0)
    L = (args.size // 16) ** 2 + 1
    block = Block(args.dim, d_state=16, expand=2)
    hidden, residual = torch.randn(1, L, args.dim), torch.randn(1, L, args.dim)

    def infer():
        with torch.no_grad():
            block(hidden, residual)

    def train():
        out, res = block(hidden.requires_grad_(), residual)
        (out.float().square().mean() + res.mean()).backward()

    record = dict(tool='tools/analysis/profile_vim_layer.py', command=' '.join(sys.argv),
                  cpu=cpu_name(), threads=args.threads,
                  versions=package_versions(('torch', 'vmamba_mm')),
                  scan_backend=scan_backend('cpu'), size=args.size, tokens=L, dim=args.dim,
                  reps=args.reps, unit='self CPU ms per layer call (torch.profiler)', tasks={})
    for task, step in (('inference', infer), ('training', train)):
        per_op, total = profile(step, args.reps)
        scan = sum(v for k, v in per_op.items() if k.startswith('vmamba_mm'))
        record['tasks'][task] = dict(total_ms=total, scan_ms=scan, scan_fraction=scan / total,
                                     per_op_ms=per_op)
        print(f'{task}: {total:.1f} ms per layer, scan {scan:.1f} ms ({scan / total:.0%}) '
              f'[{args.size}x{args.size}, {L} tokens, dim {args.dim}, {args.threads} thread(s)]')
        for name, ms in list(per_op.items())[:args.top]:
            print(f'  {name:<40}{ms:9.2f} ms {ms / total:6.1%}')
    os.makedirs(osp.dirname(osp.abspath(args.out)), exist_ok=True)
    with open(args.out, 'w') as f:
        json.dump(record, f, indent=2)
    print(f'wrote {args.out}')


if __name__ == '__main__':
    main()
