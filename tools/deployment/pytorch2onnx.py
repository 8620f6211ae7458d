"""Export an mmpretrain / mmseg / mmdet model of ours to ONNX, optionally checked.

The selective scan and the cross-scan / merge are lowered to standard ONNX
operators (opset >= 18); see vmamba_mm/deploy.py for what each kind of model
exports (classifier: logits; UperNet: segmentation logits; detector: backbone +
neck features). The input named ``input`` is the normalised image
(1, 3, H, W) as the config's data preprocessor produces it.

Examples::

    python tools/deployment/pytorch2onnx.py configs/vmamba_t_in1k_cls.py CKPT \\
        --shape 224 224 --verify
    python tools/deployment/pytorch2onnx.py configs/upernet_vim_t_160k_ade20k.py CKPT \\
        --shape 512 512 --out upernet_vim_t.onnx --verify
    python tools/deployment/pytorch2onnx.py configs/mask_rcnn_vmamba_t_1x.py CKPT \\
        --shape 800 1344 --dynamic --verify    # H, W: any multiples of 32 at run time

``--verify`` runs onnxruntime (CPU) and PyTorch on the same random input (for
``--dynamic`` at the given size and at H + 32, W + 64) and exits with status 1,
naming the output, if a relative error max|onnxruntime - PyTorch| / max|PyTorch|
exceeds 1e-4.
Needs onnx, onnxscript (and onnxruntime for --verify): pip install "vmamba_mm[deploy]".
"""
import argparse
import json
import logging
import os
import os.path as osp
import sys

sys.path.insert(0, osp.dirname(osp.dirname(osp.dirname(osp.abspath(__file__)))))

from vmamba_mm.deploy import (MIN_OPSET, VERIFY_RTOL, ExportError, build_model,  # noqa: E402
                              check_shape, export_onnx, verify_onnx)
from vmamba_mm.runner import load_config  # noqa: E402

from mmengine.logging import MMLogger  # noqa: E402


def parse_args(argv=None):
    from mmengine.config import DictAction
    parser = argparse.ArgumentParser(description='Export a model to ONNX')
    parser.add_argument('config', help='config file path')
    parser.add_argument('checkpoint', nargs='?', help='checkpoint of the whole model (as saved '
                        'by tools/train.py); without it the model is initialised as for training')
    parser.add_argument('--shape', type=int, nargs=2, required=True, metavar=('H', 'W'),
                        help='input height and width')
    parser.add_argument('--out', help='ONNX file (default: work_dirs/<config name>.onnx)')
    parser.add_argument('--verify', action='store_true',
                        help=f'compare onnxruntime with PyTorch (relative error <= {VERIFY_RTOL})')
    parser.add_argument('--dynamic', action='store_true',
                        help='symbolic H and W (any multiples of 32 at run time)')
    parser.add_argument('--opset', type=int, default=MIN_OPSET,
                        help=f'ONNX opset (>= {MIN_OPSET}, default {MIN_OPSET})')
    parser.add_argument('--cfg-options', nargs='+', action=DictAction,
                        help='override config keys, e.g. model.backbone.arch=small')
    return parser.parse_args(argv)


def main(argv=None):
    args = parse_args(argv)
    # mmengine logs every parameter's initialisation at INFO level.
    MMLogger.get_current_instance().setLevel(logging.WARNING)
    out = args.out or osp.join('work_dirs', osp.splitext(osp.basename(args.config))[0] + '.onnx')
    try:
        check_shape(tuple(args.shape), args.dynamic)
        if args.checkpoint is not None and '://' not in args.checkpoint \
                and not osp.isfile(args.checkpoint):
            raise FileNotFoundError(f'checkpoint not found: {args.checkpoint!r}')
        cfg = load_config(args.config, args.cfg_options)
        module, scope = build_model(cfg, args.checkpoint)
        os.makedirs(osp.dirname(osp.abspath(out)), exist_ok=True)
        info = export_onnx(module, tuple(args.shape), out, dynamic=args.dynamic,
                           opset=args.opset)
    except (ExportError, FileNotFoundError, ValueError, TypeError, RuntimeError,
            ImportError) as e:
        raise SystemExit(f'pytorch2onnx.py: error: {e}')
    print(f'{scope} model -> {out}: outputs {info["outputs"]}, {info["num_nodes"]} nodes, '
          f'export {info["export_s"]:.1f} s + ONNX {info["onnx_s"]:.1f} s, '
          f'H/W {"dynamic (multiples of 32)" if args.dynamic else "static"}')
    print('nodes by type:', json.dumps(info['nodes']))
    if args.verify:
        # A dynamic export is also checked at a second size.
        H, W = args.shape
        shapes = [(H, W)] + ([(H + 32, W + 64)] if args.dynamic else [])
        bad = []
        for shape in shapes:
            try:
                errors = verify_onnx(out, module, shape)
            except (ExportError, ImportError) as e:
                raise SystemExit(f'pytorch2onnx.py: error: {e}')
            for name, err in errors.items():
                print(f'verify {name} at {shape[0]}x{shape[1]}: max relative error {err:.3g}')
                if not err <= VERIFY_RTOL:
                    bad.append(f'output {name} at {shape[0]}x{shape[1]}: relative error '
                               f'{err:.3g} > {VERIFY_RTOL}')
        if bad:
            raise SystemExit('pytorch2onnx.py: verify failed: ' + '; '.join(bad))
        print(f'verify: all outputs within {VERIFY_RTOL}')

if __name__ == '__main__':
    main()
