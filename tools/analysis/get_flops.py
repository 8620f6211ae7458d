"""FLOPs and parameters of a vmamba_mm config (mmdet / mmseg / mmpretrain).

Counts with mmengine's FlopAnalyzer (fvcore-style jit tracing; one multiply-add is
one FLOP) plus vmamba_mm's handle for the selective scan (VMamba's formula, see
``vmamba_mm/flops.py``). One dummy image goes through the model's 'tensor' forward.

    python tools/analysis/get_flops.py configs/upernet_vmamba_t_160k_ade20k.py
    python tools/analysis/get_flops.py configs/vmamba_t_in1k_cls.py --shape 224 224 --json

Default shapes: classification 224x224, detection 1280x800, segmentation 512x2048.
With ``--json`` the last line printed is ``{"flops_g": ..., "params_m": ..., ...}``
(also the exact counts ``flops`` and ``params``).
"""
import argparse
import json
import os.path as osp
import sys
import time

sys.path.insert(0, osp.dirname(osp.dirname(osp.dirname(osp.abspath(__file__)))))  # run from a checkout

from vmamba_mm.flops import config_flops  # noqa: E402


def parse_args(argv=None):
    parser = argparse.ArgumentParser(description='FLOPs / params of a config')
    parser.add_argument('config', help='config file')
    parser.add_argument('--shape', type=int, nargs='+', metavar='SIZE',
                        help='input size: H W, or one number for a square '
                        '(default: 224 / 1280 800 / 512 2048 for cls / det / seg)')
    parser.add_argument('--json', action='store_true',
                        help='print one JSON object as the last line')
    args = parser.parse_args(argv)
    if args.shape is not None and len(args.shape) not in (1, 2):
        parser.error(f'--shape takes H W or one size, got {args.shape}')
    if not osp.isfile(args.config):
        parser.error(f'config file not found: {args.config}')
    return args


def main(argv=None):
    args = parse_args(argv)
    shape = None
    if args.shape is not None:
        shape = tuple(args.shape) * 2 if len(args.shape) == 1 else tuple(args.shape)
    start = time.perf_counter()
    res = config_flops(args.config, shape)
    seconds = time.perf_counter() - start
    h, w = res['shape']
    print(f'config: {args.config} ({res["scope"]}), input 1x3x{h}x{w}, counted in {seconds:.1f}s')
    for name, flops in res['by_module'].items():
        print(f'  {name:<16} {flops / 1e9:10.2f} GFLOPs')
    print(f'  {"selective scans":<16} {res["scan_flops"] / 1e9:10.2f} GFLOPs (part of the above)')
    uncounted = ', '.join(f'{k} x{v}' for k, v in sorted(res['uncounted_ops'].items()))
    print(f'  ops counted as 0 FLOPs: {uncounted or "none"}')
    print(f'FLOPs: {res["flops"] / 1e9:.2f} G   Params: {res["params"] / 1e6:.2f} M')
    if args.json:
        print(json.dumps(dict(config=args.config, shape=[h, w],
                              flops_g=round(res['flops'] / 1e9, 3),
                              params_m=round(res['params'] / 1e6, 3),
                              flops=res['flops'], params=res['params'])))


if __name__ == '__main__':
    main()
