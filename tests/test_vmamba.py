"""VMamba backbone: structure, numerics against a float64 reference, options, errors."""
import math

import pytest
import torch
import torch.nn.functional as F

import vmamba_mm  # noqa: F401  (registers VMamba in the task registries)
from vmamba_mm.models.vmamba import ARCH_SETTINGS, SS2D, VMamba

# A reduced-depth model with the tiny widths' structure: fast enough for every test.
SMALL_ARCH = dict(depths=(1, 1, 2, 1), dims=16, ssm_ratio=2.0, d_state=1)


def _randomise(module, seed=0):
    """Move every parameter off its (often trivial) initial value."""
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for name, p in module.named_parameters():
            noise = torch.randn(p.shape, generator=g, dtype=p.dtype)
            if name.endswith('A_logs'):
                p.copy_(0.5 * noise)
            else:
                p.add_(0.2 * noise)


def _expected_hw(size, stage):
    return math.ceil(size / 2 ** (stage + 2))


# ----------------------------------------------------------------- numerics
def ss2d_reference(op, x):
    """Float64 SS2D written independently: explicit index orders, a per-step loop."""
    B, _, H, W = x.shape
    D, N, R, L = op.d_inner, op.d_state, op.dt_rank, H * W
    u = torch.einsum('oc,bchw->bohw', op.in_proj.weight, x)
    u = F.silu(F.conv2d(u, op.conv2d.weight, padding=1, groups=D)).flatten(2)  # (B, D, L)
    grid = torch.arange(L).view(H, W)
    orders = [grid.flatten(), grid.t().flatten(),
              grid.flatten().flip(0), grid.t().flatten().flip(0)]
    A = -torch.exp(op.A_logs).view(4, D, N)
    Ds = op.Ds.view(4, D)
    y = x.new_zeros(B, D, L)
    for k, order in enumerate(orders):
        seq = u[:, :, order]
        dt_low, Bk, Ck = torch.einsum('cd,bdl->bcl', op.x_proj_weight[k], seq).split([R, N, N], 1)
        dt = F.softplus(torch.einsum('dr,brl->bdl', op.dt_projs_weight[k], dt_low)
                        + op.dt_projs_bias[k][:, None])
        h = x.new_zeros(B, D, N)
        outs = []
        for t in range(L):
            h = (torch.exp(dt[:, :, t, None] * A[k]) * h
                 + (dt[:, :, t] * seq[:, :, t])[:, :, None] * Bk[:, None, :, t])
            outs.append((h * Ck[:, None, :, t]).sum(-1) + Ds[k] * seq[:, :, t])
        y = y.index_add(2, order, torch.stack(outs, -1))
    y = F.layer_norm(y.view(B, D, H, W).permute(0, 2, 3, 1), (D,), op.out_norm.weight,
                     op.out_norm.bias, op.out_norm.eps).permute(0, 3, 1, 2)
    return torch.einsum('od,bdhw->bohw', op.out_proj.weight, y)


def test_ss2d_matches_float64_reference_forward_and_backward():
    torch.manual_seed(0)
    op = SS2D(dim=8, d_state=2, ssm_ratio=2.0).double()
    _randomise(op)
    x = torch.randn(2, 8, 3, 5, dtype=torch.float64, requires_grad=True)
    x_ref = x.detach().clone().requires_grad_(True)
    out = op(x)
    ref = ss2d_reference(op, x_ref)
    torch.testing.assert_close(out, ref, rtol=1e-9, atol=1e-9)

    grad_out = torch.randn_like(out)
    grads = torch.autograd.grad(out, [x, *op.parameters()], grad_out)
    grads_ref = torch.autograd.grad(ref, [x_ref, *op.parameters()], grad_out)
    names = ['input'] + [n for n, _ in op.named_parameters()]
    for name, g, g_ref in zip(names, grads, grads_ref):
        torch.testing.assert_close(g, g_ref, rtol=1e-8, atol=1e-9, msg=f'gradient of {name}')


def test_ss2d_init_follows_mamba():
    op = SS2D(dim=32, d_state=4, ssm_ratio=1.0)
    assert op.dt_rank == 2 and op.d_inner == 32
    assert op.x_proj_weight.shape == (4, 2 + 2 * 4, 32)
    torch.testing.assert_close(op.A_logs, torch.log(torch.arange(1, 5.)).expand(4 * 32, 4))
    torch.testing.assert_close(op.Ds, torch.ones(4 * 32))
    dt = F.softplus(op.dt_projs_bias)
    assert dt.min() >= 1e-4 * 0.999 and dt.max() <= 0.1 * 1.001
    assert op.dt_projs_weight.abs().max() <= 2 ** -0.5


# ---------------------------------------------------------------- structure
def test_dense_parameter_count_matches_official():
    # Backbone_VSSM: no classifier, four output LayerNorms.
    assert sum(p.numel() for p in VMamba('tiny').parameters()) == 29_481_408


def test_classifier_parameter_count_matches_official():
    # VSSM with a 1000-way head: the last stage's norm is classifier.norm.
    from mmengine.registry import DefaultScope
    from mmpretrain.registry import MODELS
    # Explicit scope: another test may have left a different global default scope.
    with DefaultScope.overwrite_default_scope('mmpretrain'):
        model = MODELS.build(dict(
            type='ImageClassifier',
            backbone=dict(type='VMamba', arch='tiny', out_indices=(3,)),
            neck=dict(type='GlobalAveragePooling'),
            head=dict(type='LinearClsHead', num_classes=1000, in_channels=768)))
    assert sum(p.numel() for p in model.parameters()) == 30_249_064


@pytest.mark.parametrize('arch', ['tiny', 'small', 'base'])
def test_named_archs_shapes_strides_channels(arch):
    model = VMamba(arch, drop_path_rate=0.0).eval()
    dims = ARCH_SETTINGS[arch]['dims']
    assert [len(layer.blocks) for layer in model.layers] == list(ARCH_SETTINGS[arch]['depths'])
    with torch.no_grad():
        outs = model(torch.randn(1, 3, 32, 32))
    assert [tuple(o.shape) for o in outs] == [(1, dims * 2 ** i, 32 // 2 ** (i + 2),
                                               32 // 2 ** (i + 2)) for i in range(4)]


@pytest.mark.parametrize('size', [(33, 47), (1, 1), (64, 20)])
def test_any_input_size(size):
    model = VMamba(SMALL_ARCH).eval()
    with torch.no_grad():
        outs = model(torch.randn(2, 3, *size))
    for i, o in enumerate(outs):
        assert o.shape == (2, 16 * 2 ** i, _expected_hw(size[0], i), _expected_hw(size[1], i))
        assert o.is_contiguous() and torch.isfinite(o).all()


def test_out_indices_subset_and_output_norms():
    model = VMamba(SMALL_ARCH, out_indices=(1, 3)).eval()
    assert hasattr(model, 'outnorm1') and hasattr(model, 'outnorm3')
    assert not hasattr(model, 'outnorm0') and not hasattr(model, 'outnorm2')
    full = VMamba(SMALL_ARCH).eval()
    _randomise(model)
    full.load_state_dict(model.state_dict(), strict=False)  # outnorm0/2 stay unused
    with torch.no_grad():
        x = torch.randn(1, 3, 40, 40)
        outs = model(x)
        ref = full(x)
    assert len(outs) == 2
    torch.testing.assert_close(outs[0], ref[1])
    torch.testing.assert_close(outs[1], ref[3])


def test_output_is_per_stage_layernorm_of_the_stage_features():
    model = VMamba(SMALL_ARCH, out_indices=(0,)).eval()
    _randomise(model)
    x = torch.randn(1, 3, 24, 24)
    with torch.no_grad():
        feat = model.layers[0].blocks(model.patch_embed(x))
        expected = F.layer_norm(feat.permute(0, 2, 3, 1), (16,), model.outnorm0.weight,
                                model.outnorm0.bias, 1e-5).permute(0, 3, 1, 2)
        torch.testing.assert_close(model(x)[0], expected)


def test_frozen_stages():
    model = VMamba(SMALL_ARCH, frozen_stages=2, out_indices=(0, 1, 2, 3))
    model.train()
    frozen = [model.patch_embed, model.layers[0], model.layers[1], model.outnorm0, model.outnorm1]
    for m in frozen:
        assert not m.training
        assert all(not p.requires_grad for p in m.parameters())
    for m in (model.layers[2], model.layers[3], model.outnorm2, model.outnorm3):
        assert m.training
        assert all(p.requires_grad for p in m.parameters())
    outs = model(torch.randn(1, 3, 32, 32))
    sum(o.sum() for o in outs).backward()
    assert model.layers[0].blocks[0].op.A_logs.grad is None
    assert model.layers[2].blocks[0].op.A_logs.grad is not None

    only_stem = VMamba(SMALL_ARCH, frozen_stages=0).train()
    assert not only_stem.patch_embed.training
    assert all(p.requires_grad for p in only_stem.layers[0].parameters())


def test_with_cp_same_output_and_gradients(monkeypatch):
    """Checkpointed blocks give the plain model's outputs and gradients. In float64:
    in float32 the stem's weight gradient (a sum over every pixel, with cancellation)
    differs by up to 4e-4 relative between any two summation orders, which oneDNN
    picks per call."""
    torch.manual_seed(0)
    ref = VMamba(SMALL_ARCH, drop_path_rate=0.0).double().train()
    _randomise(ref)
    ckpt = VMamba(SMALL_ARCH, drop_path_rate=0.0, with_cp=True).double().train()
    ckpt.load_state_dict(ref.state_dict())
    import vmamba_mm.models.vmamba as vmamba_module
    calls = []
    checkpoint = vmamba_module.cp.checkpoint
    monkeypatch.setattr(vmamba_module.cp, 'checkpoint',
                        lambda *a, **k: calls.append(1) or checkpoint(*a, **k))
    x = torch.randn(1, 3, 24, 24, dtype=torch.float64)
    grads = []
    for model in (ref, ckpt):
        xi = x.clone().requires_grad_(True)
        outs = model(xi)
        weights = [torch.linspace(-1, 1, o.numel(), dtype=o.dtype).view_as(o) for o in outs]
        sum((o * w).sum() for o, w in zip(outs, weights)).backward()
        grads.append([xi.grad] + [p.grad for p in model.parameters()])
        grads[-1].append(torch.cat([o.flatten() for o in outs]).detach())
    assert len(calls) == sum(SMALL_ARCH['depths'])  # every block of the second model
    for a, b in zip(*grads):
        torch.testing.assert_close(a, b, rtol=1e-10, atol=1e-12 * b.abs().max().item())


def test_drop_path_rates_increase_linearly():
    model = VMamba(SMALL_ARCH, drop_path_rate=0.3)
    rates = [b.drop_path.drop_prob if hasattr(b.drop_path, 'drop_prob') else 0.0
             for layer in model.layers for b in layer.blocks]
    torch.testing.assert_close(torch.tensor(rates), torch.linspace(0, 0.3, 5))


def test_bf16_autocast_forward_backward_finite():
    torch.manual_seed(0)
    model = VMamba(SMALL_ARCH, drop_path_rate=0.0).train()
    x = torch.randn(2, 3, 32, 32)
    with torch.no_grad():
        ref = model(x)
    with torch.autocast('cpu', dtype=torch.bfloat16):
        outs = model(x)
    for o, r in zip(outs, ref):
        assert torch.isfinite(o).all()
        assert (o.float() - r).abs().max() < 0.1 * r.abs().max()
    sum(o.float().sum() for o in outs).backward()
    for name, p in model.named_parameters():
        assert p.grad is not None and torch.isfinite(p.grad).all(), name


@pytest.mark.parametrize('scope', ['mmdet', 'mmseg', 'mmpretrain'])
def test_builds_from_config_in_each_scope(scope):
    import importlib
    MODELS = importlib.import_module(f'{scope}.registry').MODELS
    model = MODELS.build(dict(type='VMamba', arch=dict(depths=(1, 1, 1, 1), dims=8),
                              out_indices=(0, 2), drop_path_rate=0.1))
    assert isinstance(model, VMamba)
    assert [tuple(o.shape) for o in model.eval()(torch.randn(1, 3, 16, 16))] == \
        [(1, 8, 4, 4), (1, 32, 1, 1)]


# ------------------------------------------------------------------- errors
@pytest.mark.parametrize('x, exc, words', [
    (torch.randn(3, 32, 32), ValueError, ['4D', '(3, 32, 32)']),
    (torch.randn(1, 4, 32, 32), ValueError, ['expected 3 input channels', 'got 4']),
    (torch.zeros(1, 3, 32, 32, dtype=torch.uint8), TypeError, ['floating point', 'uint8']),
    (torch.randn(1, 3, 0, 32), ValueError, ['at least 1x1']),
])
def test_bad_input_errors(x, exc, words):
    model = VMamba(dict(depths=(1, 1), dims=8), out_indices=(0, 1))
    with pytest.raises(exc) as info:
        model(x)
    for w in words:
        assert w in str(info.value)


@pytest.mark.parametrize('kwargs, exc, words', [
    (dict(arch='huge'), ValueError, ["'huge'", 'tiny']),
    (dict(arch=dict(dims=8)), ValueError, ['missing', 'depths']),
    (dict(arch=dict(depths=(1,), dims=8, heads=3)), ValueError, ['unknown', 'heads']),
    (dict(arch=dict(depths=(1, 0), dims=8)), ValueError, ['depths']),
    (dict(arch=['tiny']), TypeError, ['str or a dict']),
    (dict(arch='tiny', out_indices=(4,)), ValueError, ['out_indices', '(4,)']),
    (dict(arch='tiny', frozen_stages=5), ValueError, ['frozen_stages']),
])
def test_bad_config_errors(kwargs, exc, words):
    with pytest.raises(exc) as info:
        VMamba(**kwargs)
    for w in words:
        assert w in str(info.value)


@pytest.mark.parametrize('scan_backend', [None, 'torch'], ids=['default', 'torch'])
def test_backends_give_the_same_model(scan_backend):
    """SS2D has one path; the per-model backend choice changes only who computes the
    operators: the CPU default ('cpu', the C++ kernel) and 'torch' (with autograd in
    training and in place under no_grad) against scan_backend='reference',
    cross_scan_backend='reference' (float64: features and every parameter gradient)."""
    model = VMamba(SMALL_ARCH, scan_backend=scan_backend).double().eval()
    _randomise(model)
    reference = VMamba(SMALL_ARCH, scan_backend='reference',
                       cross_scan_backend='reference').double().eval()
    reference.load_state_dict(model.state_dict())
    x = torch.randn(2, 3, 37, 50, dtype=torch.float64)

    def features_and_grads(m):
        m.zero_grad()
        outs = m(x)
        sum((o * o).sum() for o in outs).backward()
        return [o.detach() for o in outs], [p.grad.clone() for p in m.parameters()]

    torch_backend = features_and_grads(model)
    with torch.no_grad():
        in_place = model(x)
    general = features_and_grads(reference)
    for a, b, c in zip(torch_backend[0], in_place, general[0]):
        torch.testing.assert_close(a, c, rtol=1e-10, atol=1e-10)
        torch.testing.assert_close(b, c, rtol=1e-10, atol=1e-10)
    for a, c in zip(torch_backend[1], general[1]):
        torch.testing.assert_close(a, c, rtol=1e-9, atol=1e-9)


def test_backend_choice_per_model_and_errors(monkeypatch):
    """scan_backend / cross_scan_backend reach every block, override the environment
    variables, and a typo fails when the model is built, listing the choices."""
    monkeypatch.setenv('VMAMBA_MM_SCAN_BACKEND', 'nope')
    monkeypatch.setenv('VMAMBA_MM_CROSS_SCAN_BACKEND', 'nope')
    model = VMamba(dict(depths=(1, 1), dims=8), out_indices=(0, 1), scan_backend='torch',
                   cross_scan_backend='reference')
    ops = [m for m in model.modules() if type(m).__name__ == 'SS2D']
    assert len(ops) == 2 and all(m.scan_backend == 'torch' for m in ops)
    assert all(m.cross_scan_backend == 'reference' for m in ops)
    model(torch.randn(1, 3, 16, 16))  # the environment's 'nope' is not consulted
    with pytest.raises(ValueError, match="unknown .*'nope'"):
        VMamba(dict(depths=(1, 1), dims=8), out_indices=(0, 1))(torch.randn(1, 3, 16, 16))
    with pytest.raises(ValueError, match=r"VMamba: unknown scan_backend 'trition'; choose one of "
                                         r"\['cpu', 'reference', 'torch', 'triton'\]"):
        VMamba('tiny', scan_backend='trition')
    with pytest.raises(ValueError, match='VMamba: unknown cross_scan_backend'):
        VMamba('tiny', cross_scan_backend='cuda')


@pytest.mark.parametrize('gelu', [False, True])
@pytest.mark.parametrize('bias', [False, True])
def test_inference_linear_matches_plain_ops(gelu, bias):
    """models.utils.linear: the fused oneDNN inference call (float32 CPU, no grad)
    equals F.linear (+ exact GELU); with gradients it is the plain ops."""
    from vmamba_mm.models.utils import _ONEDNN_LINEAR, _onednn_linear_ok, linear
    x = torch.randn(2, 5, 7, 24).permute(0, 2, 1, 3)  # strided, as NHWC views are
    w = torch.randn(40, 24)
    b = torch.randn(40) if bias else None
    expected = F.linear(x, w, b)
    expected = F.gelu(expected) if gelu else expected
    with torch.no_grad():
        assert _onednn_linear_ok(x, w, b) == _ONEDNN_LINEAR  # True on x86-64 builds
        torch.testing.assert_close(linear(x, w, b, gelu=gelu), expected, rtol=1e-5, atol=1e-5)
    wg = w.clone().requires_grad_()
    assert not _onednn_linear_ok(x, wg, b)
    out = linear(x, wg, b, gelu=gelu)
    out.sum().backward()
    torch.testing.assert_close(out.detach(), expected, rtol=1e-5, atol=1e-5)
    assert wg.grad is not None and wg.grad.abs().sum() > 0
    assert not _onednn_linear_ok(x.double(), w.double(), None)


def test_float32_inference_path_matches_autograd_path():
    """float32 under no_grad: oneDNN linears and the in-place scan, against the
    autograd path (MKL linears, the scan keeping its residuals) of the same weights."""
    model = VMamba(SMALL_ARCH).eval()
    _randomise(model)
    x = torch.randn(2, 3, 45, 61)
    general = model(x)
    with torch.no_grad():
        fast = model(x)
    for g, f in zip(general, fast):
        torch.testing.assert_close(f, g.detach(), rtol=1e-4, atol=1e-4)
