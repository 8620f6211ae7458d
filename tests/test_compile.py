"""torch.compile of the backbones: fullgraph, forward and backward, equal to eager.

The scan and cross-scan are registered operators, so the compiled graph holds
one node per call (the backends' Python loops are not traced) and inductor
compiles everything around them. Small architectures; CPU inductor (gcc).
"""
import copy

import pytest
import torch

from vmamba_mm.models.vim import Vim
from vmamba_mm.models.vmamba import VMamba

from helpers import DEVICE, has_triton

RTOL = 1e-5


def rel_err(a, b):
    """max |a - b| / max |b| (per tensor: elementwise ratios are meaningless where b ~ 0)."""
    return ((a - b).abs().max() / b.abs().max().clamp(min=1e-30)).item()


def _randomise(module, seed=0):
    """Every parameter off its initial value (at init the SSM parameters' gradients
    are tiny, which makes relative comparisons of them meaningless)."""
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for name, p in module.named_parameters():
            noise = torch.randn(p.shape, generator=g, dtype=p.dtype)
            if name.split('.')[-1] in ('A_logs', 'A_log', 'A_b_log'):
                p.copy_(0.5 * noise)
            else:
                p.add_(0.2 * noise)
    return module


def _models():
    torch.manual_seed(0)
    models = {
        'vmamba': VMamba(arch=dict(depths=(1, 1), dims=8), drop_path_rate=0.0,
                         out_indices=(0, 1)),
        'vim_cls': Vim(arch=dict(embed_dims=16, num_layers=2, d_state=4, expand=2),
                       img_size=64),
        'vim_featmap': Vim(arch=dict(embed_dims=16, num_layers=2, d_state=4, expand=2),
                           img_size=64, out_type='featmap', out_indices=(0, 1, 0, 1)),
    }
    return {name: _randomise(m) for name, m in models.items()}


def _train_step(model, fn, x):
    model.train()
    model.zero_grad(set_to_none=True)
    feats = fn(x)
    gen = torch.Generator().manual_seed(1)
    loss = sum((f * torch.randn(f.shape, generator=gen).to(f.dtype)).sum() for f in feats)
    loss.backward()
    grads = {n: p.grad.clone() for n, p in model.named_parameters() if p.grad is not None}
    return [f.detach() for f in feats], grads


def _zero_gradient_params(model, x):
    """Parameters whose exact gradient is 0 (|g| < 1e-9 of the largest, in float64):
    a bias right before a train-mode BatchNorm, whose batch mean removes it. In
    float32 their gradient is pure rounding noise, different for any two orders
    of summation (eager and inductor), so no relative tolerance applies to them."""
    m64 = copy.deepcopy(model).double()
    _, grads = _train_step(m64, m64, x.double())
    top = max(g.abs().max() for g in grads.values())
    return {n for n, g in grads.items() if g.abs().max() < 1e-9 * top}


# Compiled artefacts are cached across processes by graph, not by the operators'
# implementations: a cache from an earlier version of a backend would be reused.
# Every test here compiles from scratch.
NO_CACHE_ENV = {'TORCHINDUCTOR_FX_GRAPH_CACHE': '0', 'TORCHINDUCTOR_AUTOGRAD_CACHE': '0'}


@pytest.fixture(autouse=True)
def _fresh_dynamo():
    import torch._functorch.config as functorch_config
    import torch._inductor.config as inductor_config
    torch._dynamo.reset()
    with inductor_config.patch(fx_graph_cache=False), \
            functorch_config.patch(enable_autograd_cache=False):
        yield
    torch._dynamo.reset()


@pytest.mark.slow
@pytest.mark.parametrize('name', ['vmamba', 'vim_cls', 'vim_featmap'])
def test_compiled_backbone_equals_eager(name):
    """Training step (outputs and every parameter gradient) and inference (the
    scan's in-place path) of torch.compile(model, fullgraph=True) against eager."""
    eager = _models()[name]
    compiled_model = copy.deepcopy(eager)
    compiled = torch.compile(compiled_model, fullgraph=True)
    x = torch.randn(2, 3, 64, 48)
    zero = _zero_gradient_params(eager, x)
    assert zero == ({'fpn1.0.bias'} if name == 'vim_featmap' else set())
    outs = {}
    for tag, model, fn in (('eager', eager, eager), ('compiled', compiled_model, compiled)):
        feats, grads = _train_step(model, fn, x)
        model.eval()
        with torch.no_grad():
            infer = fn(x)
        outs[tag] = (feats, grads, infer)
    (fe, ge, ie), (fc, gc, ic) = outs['eager'], outs['compiled']
    for a, b in zip(fc, fe):
        assert rel_err(a, b) <= RTOL
    for a, b in zip(ic, ie):
        assert rel_err(a, b) <= RTOL
    assert set(gc) == set(ge) and len(ge) == len(list(eager.parameters()))
    top = max(g.abs().max() for g in ge.values())
    for n in zero:  # rounding noise on both sides, far below the gradients' scale
        assert gc[n].abs().max() < 1e-4 * top and ge[n].abs().max() < 1e-4 * top
    errs = {n: rel_err(gc[n], ge[n]) for n in ge if n not in zero}
    worst = max(errs, key=errs.get)
    assert errs[worst] <= RTOL, (worst, errs[worst])


def test_compiled_graph_holds_the_operators():
    """Dynamo captures one graph (no break) in which each SS2D block is one
    cross-scan, one selective-scan and one cross-merge node."""
    model = _models()['vmamba'].eval()
    graphs = []

    def backend(gm, example_inputs):
        graphs.append(gm)
        return gm.forward

    compiled = torch.compile(model, backend=backend, fullgraph=True)
    with torch.no_grad():
        compiled(torch.randn(1, 3, 32, 32))
    assert len(graphs) == 1
    targets = [str(n.target) for n in graphs[0].graph.nodes if n.op == 'call_function']
    blocks = 1 + 1
    assert sum('vmamba_mm.selective_scan_fwd' in t for t in targets) == blocks
    assert sum('vmamba_mm.cross_scan' in t for t in targets) == blocks
    assert sum('vmamba_mm.cross_merge' in t for t in targets) == blocks
    # No unrolled scan: the whole graph stays small.
    assert len(targets) < 60 * blocks, len(targets)


@pytest.mark.skipif(not has_triton(), reason='triton not installed')
def test_triton_backend_is_compile_ready():
    """The CUDA path's operators (Triton backend) under torch.compile(fullgraph=True):
    their fake implementations (the kernels' residual shapes included) trace
    forward and backward without a graph break, and the compiled model equals the
    eager one. On CPU the kernels run in Triton's interpreter ('aot_eager': no
    inductor code around them; a GPU session runs the same test with inductor)."""
    backend = 'inductor' if torch.cuda.is_available() else 'aot_eager'
    model = _randomise(VMamba(arch=dict(depths=(1, ), dims=8), out_indices=(0, ),
                              drop_path_rate=0.0, scan_backend='triton',
                              cross_scan_backend='triton')).to(DEVICE)
    compiled_model = copy.deepcopy(model)
    compiled = torch.compile(compiled_model, fullgraph=True, backend=backend)
    x = torch.randn(1, 3, 20, 24, device=DEVICE)
    fe, ge = _train_step(model, model, x)
    fc, gc = _train_step(compiled_model, compiled, x)
    assert rel_err(fc[0], fe[0]) <= RTOL
    for n in ge:
        assert rel_err(gc[n], ge[n]) <= 1e-4, n


def _run_tool(tool, *args, timeout=900):
    import os
    import subprocess
    import sys
    root = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
    cmd = [sys.executable, os.path.join(root, 'tools', tool), *map(str, args)]
    proc = subprocess.run(cmd, cwd=root, env=dict(os.environ, PYTHONPATH=root, **NO_CACHE_ENV),
                          capture_output=True, text=True, timeout=timeout)
    out = proc.stdout + proc.stderr
    assert proc.returncode == 0, f'{cmd} failed ({proc.returncode}):\n{out[-6000:]}'
    return out


@pytest.mark.slow
def test_runner_compile_trains_the_seg_demo(tmp_path):
    """mmengine's Runner with compile=True (torch.compile of train_step) trains the
    VMamba UperNet toy demo: a few iterations, finite losses, a checkpoint."""
    import json
    data = tmp_path / 'toy_ade'
    _run_tool('data/make_toy_ade20k.py', '--out', data, '--num-train', 4, '--num-val', 2,
              '--size', 64, '--seed', 1)
    work = tmp_path / 'work'
    out = _run_tool(
        'train.py', 'configs/demo/upernet_vmamba_toy.py', '--work-dir', work, '--cfg-options',
        'compile=True', f'train_dataloader.dataset.data_root={data}',
        'train_dataloader.batch_size=2', f'val_dataloader.dataset.data_root={data}',
        f'test_dataloader.dataset.data_root={data}', 'train_cfg.max_iters=3',
        'train_cfg.val_interval=3', 'default_hooks.checkpoint.interval=3',
        'default_hooks.logger.interval=1')
    assert 'Model has been "compiled"' in out
    assert (work / 'iter_3.pth').is_file()
    scalars = list(work.glob('*/vis_data/scalars.json'))
    records = [json.loads(line) for line in scalars[0].read_text().splitlines() if line]
    losses = [r['loss'] for r in records if 'loss' in r]
    assert len(losses) == 3 and all(torch.isfinite(torch.tensor(losses)))


def _toy_detector_config(tmp_path, compile_cfg):
    """A config file: the toy VMamba Mask R-CNN on 4 generated images (2 iterations
    of batch 2), inputs padded to one fixed size, ``compile`` as given."""
    import os
    root = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
    data = tmp_path / 'toy_coco'
    _run_tool('data/make_toy_coco.py', '--out', data, '--num-train', 4, '--num-val', 2,
              '--seed', 3)
    base = os.path.join(root, 'configs', 'demo', 'mask_rcnn_vmamba_toy.py')
    cfg = tmp_path / 'det_compile.py'
    cfg.write_text(f"""_base_ = [{base!r}]
data_root = {str(data) + '/'!r}
model = dict(
    backbone=dict(arch=dict(depths=(1, 1, 1, 1))),
    data_preprocessor=dict(batch_augments=[
        dict(type='BatchFixedSizePad', size=(224, 224), pad_mask=True)]))
train_dataloader = dict(batch_size=2, dataset=dict(data_root=data_root))
val_dataloader = dict(dataset=dict(data_root=data_root))
test_dataloader = val_dataloader
val_evaluator = dict(ann_file=data_root + 'annotations/instances_val2017.json')
test_evaluator = val_evaluator
train_cfg = dict(max_epochs=1, val_interval=10)
default_hooks = dict(logger=dict(interval=1))
compile = {compile_cfg!r}
""")
    return cfg


@pytest.mark.slow
def test_runner_compiles_the_detector_backbone(tmp_path, monkeypatch):
    """compile=dict(module='backbone') trains the toy Mask R-CNN with only the
    backbone compiled: inductor generates code (its cache directory fills), the
    losses are finite and the checkpoint's parameter names are the eager model's
    (no ``_orig_mod.`` prefixes)."""
    import json

    from mmdet.registry import MODELS
    from mmdet.utils import register_all_modules
    from mmengine.config import Config

    cfg = _toy_detector_config(tmp_path, dict(module='backbone', dynamic=False))
    inductor_dir = tmp_path / 'inductor'
    monkeypatch.setenv('TORCHINDUCTOR_CACHE_DIR', str(inductor_dir))
    work = tmp_path / 'work'
    out = _run_tool('train.py', cfg, '--work-dir', work)
    assert 'model.backbone (VMamba) has been compiled' in out
    assert 'Model has been "compiled"' not in out  # not the whole train_step
    generated = [p for p in inductor_dir.rglob('*.py') if p.is_file()]
    assert generated, f'inductor generated no code under {inductor_dir}'
    scalars = list(work.glob('*/vis_data/scalars.json'))
    records = [json.loads(line) for line in scalars[0].read_text().splitlines() if line]
    losses = [r['loss'] for r in records if 'loss' in r]
    assert len(losses) == 2 and all(torch.isfinite(torch.tensor(losses)))
    ckpt = torch.load(work / 'epoch_1.pth', map_location='cpu', weights_only=False)
    import vmamba_mm  # noqa: F401  (registers the models)
    register_all_modules()
    eager = MODELS.build(Config.fromfile(str(cfg)).model)
    assert set(ckpt['state_dict']) == set(eager.state_dict())


def test_runner_compile_module_names_a_missing_submodule(tmp_path):
    """compile=dict(module=...) naming no submodule stops before training, naming it
    and the model's submodules."""
    from mmengine.config import Config

    from vmamba_mm.engine.safe_runner import SafeRunner
    cfg = Config.fromfile(str(_toy_detector_config(tmp_path, dict(module='backbone.stem2'))))
    cfg.work_dir = str(tmp_path / 'work')
    runner = SafeRunner.from_cfg(cfg)
    with pytest.raises(ValueError, match=r"compile.module='backbone.stem2': MaskRCNN has no "
                                         r"submodule 'backbone.stem2' \(its submodules: "
                                         r"data_preprocessor, backbone, neck"):
        runner.train()
    assert not list((tmp_path / 'work').glob('*.pth'))
