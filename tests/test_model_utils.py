"""models/utils.py: the torch-only DropPath and norm builder (no mmcv needed)."""
import pytest
import torch
import torch.nn as nn

from vmamba_mm.models.utils import DropPath, build_norm_layer


def test_drop_path_drops_whole_samples_and_rescales():
    torch.manual_seed(0)
    layer = DropPath(0.25)
    x = torch.rand(4000, 3, 2, 2) + 0.5
    y = layer(x)
    ratio = (y / x).flatten(1)
    # Per sample: all zero, or all scaled by 1 / (1 - p).
    kept = ratio[:, 0] != 0
    assert torch.allclose(ratio[kept], torch.full_like(ratio[kept], 1 / 0.75))
    assert (ratio[~kept] == 0).all()
    assert abs((~kept).float().mean().item() - 0.25) < 0.03  # 4000 samples: ~4 sigma
    assert abs(y.mean().item() / x.mean().item() - 1) < 0.05  # expectation preserved


def test_drop_path_eval_and_gradient():
    layer = DropPath(0.5).eval()
    x = torch.randn(8, 5, requires_grad=True)
    assert layer(x) is x
    layer.train()
    torch.manual_seed(1)
    y = layer(x)
    y.sum().backward()
    kept = (y.detach() != 0).any(1)
    assert torch.allclose(x.grad[kept], torch.full_like(x.grad[kept], 2.0))
    assert (x.grad[~kept] == 0).all()
    assert 'drop_prob=0.5' in repr(layer)
    with pytest.raises(ValueError, match=r'drop_prob must be in \[0, 1\)'):
        DropPath(1.0)


@pytest.mark.parametrize('cfg,cls', [(dict(type='BN'), nn.BatchNorm2d),
                                     (dict(type='SyncBN', requires_grad=True), nn.SyncBatchNorm),
                                     (dict(type='GN', num_groups=2), nn.GroupNorm)])
def test_build_norm_layer(cfg, cls):
    layer = build_norm_layer(cfg, 8)
    assert type(layer) is cls
    assert layer.weight.shape == (8,) and layer.weight.requires_grad
    assert layer.eval()(torch.randn(2, 8, 3, 3)).shape == (2, 8, 3, 3)


def test_build_norm_layer_options_and_errors():
    layer = build_norm_layer(dict(type='BN', eps=1e-3, momentum=0.2, requires_grad=False), 4)
    assert layer.eps == 1e-3 and layer.momentum == 0.2
    assert not any(p.requires_grad for p in layer.parameters())
    assert set(layer.state_dict()) == {'weight', 'bias', 'running_mean', 'running_var',
                                       'num_batches_tracked'}  # mmcv's BN keys
    with pytest.raises(ValueError, match="unknown norm type 'LN2d'"):
        build_norm_layer(dict(type='LN2d'), 4)
    with pytest.raises(ValueError, match='GN needs num_groups'):
        build_norm_layer(dict(type='GN'), 4)
    with pytest.raises(TypeError, match='must be a dict'):
        build_norm_layer('BN', 4)


def test_backbones_import_with_mmengine_alone():
    """No mmcv, OpenCV, matplotlib or task library: the backbones build and run."""
    import subprocess
    import sys
    code = (
        "import sys\n"
        "for m in ('cv2', 'matplotlib', 'mmcv', 'mmdet', 'mmseg', 'mmpretrain'):\n"
        "    sys.modules[m] = None\n"
        "import torch, vmamba_mm\n"
        "from vmamba_mm.models import VMamba, Vim\n"
        "v = VMamba(arch=dict(depths=(1, 1), dims=8), drop_path_rate=0.1, out_indices=(1,))\n"
        "w = Vim(arch=dict(embed_dims=16, num_layers=2, d_state=4, expand=2), img_size=32,\n"
        "        out_type='featmap', out_indices=(0, 1, 1, 1))\n"
        "print(tuple(v(torch.randn(1, 3, 32, 32))[0].shape),\n"
        "      tuple(w(torch.randn(1, 3, 32, 32))[0].shape))\n"
        "print(sorted(m for m in sys.modules if m.split('.')[0] in ('vmamba_mm',)\n"
        "             and m.startswith('vmamba_mm.engine')))\n")
    res = subprocess.run([sys.executable, '-c', code], capture_output=True, text=True,
                         timeout=300)
    assert res.returncode == 0, res.stderr[-3000:]
    shapes, engine = res.stdout.strip().splitlines()
    assert shapes == '(1, 16, 4, 4) (1, 16, 8, 8)'
    assert engine == '[]'  # the Runner extensions need OpenCV: not imported
