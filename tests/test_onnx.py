"""ONNX export (vmamba_mm/deploy.py, tools/deployment/pytorch2onnx.py).

Tiny VMamba and Vim models of each kind (classifier, UperNet, Mask R-CNN
features), derived from our configs, exported with the scan operators lowered to
standard ONNX operators and checked with onnxruntime against PyTorch (max relative
error <= 1e-4 on every output); the tool's checks and errors.
"""
import importlib.util
import os
import os.path as osp
import subprocess
import sys

import onnx
import pytest
import torch

from vmamba_mm.deploy import (VERIFY_RTOL, ExportError, build_model, export_onnx,
                              verify_onnx)
from vmamba_mm.runner import load_config

ROOT = osp.dirname(osp.dirname(osp.abspath(__file__)))
TOOL = osp.join(ROOT, 'tools', 'deployment', 'pytorch2onnx.py')

# name: (config, overrides making it tiny, expected output names)
TINY = {
    'cls-vmamba': ('configs/vmamba_t_in1k_cls.py', {
        'model.backbone.arch': dict(_delete_=True, depths=[1, 1, 1, 1], dims=16),
        'model.head.in_channels': 128, 'model.head.num_classes': 7}, ['logits']),
    'cls-vim': ('configs/vim_ti_in1k_cls.py', {
        'model.backbone.arch': dict(_delete_=True, embed_dims=32, num_layers=2, d_state=4,
                                   expand=2),
        'model.backbone.img_size': 64, 'model.head.in_channels': 32,
        'model.head.num_classes': 7}, ['logits']),
    'seg-vmamba': ('configs/demo/upernet_vmamba_toy.py', {}, ['seg_logits']),
    'seg-vim': ('configs/demo/upernet_vim_toy.py', {
        'model.backbone.arch.num_layers': 2, 'model.backbone.out_indices': [0, 1, 1, 1]},
        ['seg_logits']),
    'det-vmamba': ('configs/demo/mask_rcnn_vmamba_toy.py', {},
                   [f'feat{i}' for i in range(5)]),
    'det-vim': ('configs/demo/mask_rcnn_vim_toy.py', {
        'model.backbone.arch.num_layers': 2, 'model.backbone.out_indices': [0, 1, 1, 1]},
        [f'feat{i}' for i in range(5)]),
}


def tiny_model(name):
    config, overrides, _ = TINY[name]
    torch.manual_seed(0)
    return build_model(load_config(osp.join(ROOT, config), overrides))


def load_tool():
    spec = importlib.util.spec_from_file_location('pytorch2onnx', TOOL)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def vmamba_mm_nodes(path):
    return [n.op_type for n in onnx.load(path).graph.node if n.domain not in ('', 'ai.onnx')]


@pytest.mark.parametrize('name', sorted(TINY))
def test_export_matches_pytorch(name, tmp_path):
    module, scope = tiny_model(name)
    assert scope == name.split('-')[0].replace('cls', 'mmpretrain').replace(
        'seg', 'mmseg').replace('det', 'mmdet')
    path = str(tmp_path / f'{name}.onnx')
    info = export_onnx(module, (64, 64), path)
    assert info['outputs'] == TINY[name][2]
    assert not vmamba_mm_nodes(path), 'only standard ONNX operators'
    assert info['nodes']['Exp'] > 0 and info['num_nodes'] == sum(info['nodes'].values())
    onnx.checker.check_model(path)
    errors = verify_onnx(path, module, (64, 64))
    assert set(errors) == set(TINY[name][2])
    assert all(err <= VERIFY_RTOL for err in errors.values()), errors


@pytest.mark.slow
@pytest.mark.parametrize('name', ['det-vmamba', 'det-vim'])
def test_dynamic_export_runs_at_other_sizes(name, tmp_path):
    """--dynamic: one file for every H, W multiple of 32 (one block or several of
    the scan's 256-step blocks), each size within the tolerance."""
    module, _ = tiny_model(name)
    path = str(tmp_path / f'{name}.onnx')
    export_onnx(module, (64, 96), path, dynamic=True)
    inputs = onnx.load(path).graph.input[0].type.tensor_type.shape.dim
    assert [d.dim_param != '' for d in inputs] == [False, False, True, True]
    for shape in ((64, 96), (32, 32), (96, 64), (160, 224)):
        errors = verify_onnx(path, module, shape)
        assert all(err <= VERIFY_RTOL for err in errors.values()), (shape, errors)


@pytest.mark.slow
def test_dynamic_export_of_a_size_dependent_trace_is_refused(tmp_path):
    """Vim traced at its stored grid skips the position-embedding resize: --dynamic
    refuses that trace instead of writing a file that is right at one size only."""
    module, _ = tiny_model('cls-vim')  # img_size 64
    with pytest.raises(ExportError, match=r'--dynamic: the model traced at \(64, 64\)'):
        export_onnx(module, (64, 64), str(tmp_path / 'x.onnx'), dynamic=True)
    assert not (tmp_path / 'x.onnx').exists()


@pytest.mark.slow
def test_tool_exports_and_verifies(tmp_path):
    """The command line as a user runs it (a subprocess), with --cfg-options."""
    out = tmp_path / 'seg.onnx'
    args = [sys.executable, TOOL, osp.join(ROOT, TINY['seg-vmamba'][0]), '--shape', '64', '96',
            '--out', str(out), '--verify', '--cfg-options', 'model.decode_head.channels=32']
    proc = subprocess.run(args, cwd=ROOT, capture_output=True, text=True, timeout=600,
                          env={**os.environ, 'PYTHONPATH': ROOT})
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert out.is_file()
    assert "mmseg model -> " in proc.stdout and "outputs ['seg_logits']" in proc.stdout
    assert 'verify seg_logits at 64x96: max relative error' in proc.stdout
    assert 'verify: all outputs within 0.0001' in proc.stdout


def test_tool_verify_failure_names_the_output(tmp_path, monkeypatch):
    """PyTorch weights changed after the export: --verify exits non-zero, naming the
    output and its error."""
    tool = load_tool()
    real = tool.verify_onnx

    def verify_after_change(path, module, shape, seed=0):
        with torch.no_grad():
            module.model.decode_head.conv_seg.bias.add_(1.0)
        return real(path, module, shape, seed)

    monkeypatch.setattr(tool, 'verify_onnx', verify_after_change)
    argv = [osp.join(ROOT, TINY['seg-vmamba'][0]), '--shape', '64', '64',
            '--out', str(tmp_path / 'x.onnx'), '--verify']
    with pytest.raises(SystemExit, match=r'verify failed: output seg_logits at 64x64: '
                                         r'relative error .* > 0.0001'):
        tool.main(argv)


def test_checkpoint_of_the_whole_model_loads_and_a_wrong_one_is_refused(tmp_path):
    module, _ = tiny_model('cls-vmamba')
    good = tmp_path / 'good.pth'
    torch.save({'meta': {}, 'state_dict': module.model.state_dict()}, good)
    config, overrides, _ = TINY['cls-vmamba']
    cfg = load_config(osp.join(ROOT, config), overrides)
    torch.manual_seed(1)  # another random init: the checkpoint must replace it
    loaded, _ = build_model(cfg, str(good))
    for (k, v), w in zip(module.model.state_dict().items(), loaded.model.state_dict().values()):
        assert torch.equal(v, w), k
    # Another head size: the mismatched keys are named.
    wrong_cfg = load_config(osp.join(ROOT, config), {**overrides, 'model.head.num_classes': 5})
    with pytest.raises(RuntimeError, match=r'shape-mismatched keys.*head\.fc\.weight'):
        build_model(wrong_cfg, str(good))
    # A backbone-only checkpoint: missing keys, and where it belongs instead.
    backbone = tmp_path / 'backbone.pth'
    torch.save(module.model.backbone.state_dict(), backbone)
    with pytest.raises(RuntimeError, match=r'missing keys.*backbone\.init_cfg'):
        build_model(cfg, str(backbone))


def _tool_error(argv):
    tool = load_tool()
    with pytest.raises(SystemExit) as info:
        tool.main(argv)
    return str(info.value)


def test_unsupported_options_and_models_are_clear_errors(tmp_path):
    cls_cfg = osp.join(ROOT, TINY['cls-vmamba'][0])
    out = ['--out', str(tmp_path / 'x.onnx')]
    assert 'opset 17 is not supported' in _tool_error(
        [cls_cfg, '--shape', '64', '64', '--opset', '17', *out])
    assert 'multiples of 32' in _tool_error([cls_cfg, '--shape', '64', '50', '--dynamic', *out])
    seg_cfg = osp.join(ROOT, TINY['seg-vmamba'][0])
    assert 'pyramid pooling' in _tool_error([seg_cfg, '--shape', '64', '64', '--dynamic', *out])
    assert 'checkpoint not found' in _tool_error(
        [cls_cfg, str(tmp_path / 'none.pth'), '--shape', '64', '64', *out])
    # A config of no task library.
    bad_scope = tmp_path / 'bad_scope.py'
    bad_scope.write_text("default_scope = 'mmengine'\nmodel = dict(type='Foo')\n")
    assert "default_scope is 'mmengine'" in _tool_error([str(bad_scope), '--shape', '64', '64',
                                                         *out])
    # An mmpretrain model that is not an image classifier.
    retriever = tmp_path / 'retriever.py'
    retriever.write_text(
        f"_base_ = [{cls_cfg!r}]\n"
        "model = dict(_delete_=True, type='ImageToImageRetriever', prototype='proto.pth',"
        " image_encoder=[dict(type='VMamba', arch=dict(depths=[1], dims=8), out_indices=[0]),"
        " dict(type='GlobalAveragePooling')])\n")
    msg = _tool_error([str(retriever), '--shape', '64', '64', *out])
    assert 'ImageToImageRetriever is not supported' in msg and 'ImageClassifier' in msg


def test_vmamba_mm_imports_without_the_onnx_packages():
    """onnx, onnxscript and onnxruntime are optional: importing the package (and the
    export module) works without them; the export then names what is missing."""
    code = ("import sys\n"
            "for name in ('onnx', 'onnxscript', 'onnxruntime'):\n"
            "    sys.modules[name] = None  # import fails\n"
            "import vmamba_mm, vmamba_mm.deploy, vmamba_mm.ops.export\n"
            "from vmamba_mm.deploy import export_onnx\n"
            "try:\n"
            "    export_onnx(None, (64, 64), 'x.onnx')\n"
            "except ImportError as e:\n"
            "    print('ImportError:', e)\n")
    proc = subprocess.run([sys.executable, '-c', code], cwd=ROOT, capture_output=True,
                          text=True, timeout=300, env={**os.environ, 'PYTHONPATH': ROOT})
    assert proc.returncode == 0, proc.stderr
    assert 'ImportError: ONNX export needs onnx and onnxscript' in proc.stdout
    assert 'vmamba_mm[deploy]' in proc.stdout
