"""FLOP counting: the scan formula, hand counts, FlopCounterMode, the CLI tool."""
import importlib.util
import json
import math
import os.path as osp
import subprocess
import sys

import pytest
import torch
from torch import nn


import vmamba_mm.ops as ops  # noqa: E402
from vmamba_mm.flops import config_flops, count_flops  # noqa: E402
from vmamba_mm.ops import selective_scan_flops  # noqa: E402

ROOT = osp.dirname(osp.dirname(osp.abspath(__file__)))


class OneScan(nn.Module):
    """A linear layer then exactly one selective scan: countable by hand."""

    def __init__(self, dim=8, d_state=4, groups=1, with_D=True, with_z=False):
        super().__init__()
        self.proj = nn.Linear(dim, dim)
        self.A = nn.Parameter(-torch.rand(dim, d_state))
        self.D = nn.Parameter(torch.ones(dim)) if with_D else None
        self.with_z = with_z
        self.groups = groups

    def forward(self, x):  # x: (batch, L, dim)
        u = self.proj(x).transpose(1, 2)
        batch, dim, length = u.shape
        n = self.A.shape[1]
        bc = u[:, :self.groups * n].reshape(batch, self.groups, n, length)
        if self.groups == 1:
            bc = bc[:, 0]
        return ops.selective_scan(u, u.sigmoid(), self.A, bc, bc, D=self.D,
                                  z=u if self.with_z else None, delta_softplus=True)


def test_selective_scan_flops_formula():
    # 9 * B * D * N * L, plus B * D * L for each of D and z.
    assert selective_scan_flops(2, 8, 16, 4, with_D=False, with_z=False) == 9 * 2 * 8 * 4 * 16
    assert selective_scan_flops(2, 8, 16, 4, with_D=True, with_z=False) == 9216 + 256
    assert selective_scan_flops(2, 8, 16, 4, with_D=True, with_z=True) == 9216 + 512
    assert selective_scan_flops(1, 1, 1, 1, with_D=False, with_z=True) == 10


@pytest.mark.parametrize('with_D,with_z,groups', [(True, False, 1), (False, False, 1),
                                                  (True, True, 2), (False, True, 1)])
def test_count_flops_equals_hand_count(with_D, with_z, groups):
    batch, length, dim, d_state = 2, 16, 8, 4
    model = OneScan(dim, d_state, groups, with_D, with_z)
    res = count_flops(model, (torch.randn(batch, length, dim), ))
    linear = batch * length * dim * dim  # multiply-adds of the projection
    scan = 9 * batch * dim * d_state * length
    scan += batch * dim * length * (int(with_D) + int(with_z))
    assert res['scan_flops'] == scan
    assert res['flops'] == linear + scan
    assert res['params'] == dim * dim + dim + dim * d_state + (dim if with_D else 0)
    assert res['by_module'] == {'proj': linear}
    assert model.training  # mode restored


@pytest.mark.parametrize('layout', ['channel_major', 'time_major'])
def test_flop_counter_mode_counts_the_operator(layout):
    """torch's FlopCounterMode sees the registered operator (one formula, no patching):
    2 FLOPs per multiply-add for the linear layer (its convention), VMamba's count
    for the scan, in either layout."""
    from torch.utils.flop_counter import FlopCounterMode
    batch, length, dim, d_state = 2, 16, 8, 4
    model = OneScan(dim, d_state, 2, True, True)
    x = torch.randn(batch, length, dim)
    if layout == 'time_major':
        def run():
            u = model.proj(x)
            bc = u[..., :2 * d_state].reshape(batch, length, 2, d_state)
            return ops.selective_scan(u, u.sigmoid(), model.A, bc, bc, D=model.D, z=u,
                                      delta_softplus=True, layout='time_major')
    else:
        run = lambda: model(x)  # noqa: E731
    with FlopCounterMode(display=False) as counter:
        run()
    scan = selective_scan_flops(batch, dim, length, d_state, with_D=True, with_z=True)
    assert counter.get_total_flops() == 2 * batch * length * dim * dim + scan
    counts = counter.get_flop_counts()['Global']
    assert counts[torch.ops.vmamba_mm.selective_scan_fwd] == scan


def test_ss2d_block_hand_count():
    """One VMamba SS2D block, every counted op written out (VMamba's conventions)."""
    from vmamba_mm.models.vmamba import SS2D
    C, H, W = 8, 5, 6
    block = SS2D(C, d_state=2, ssm_ratio=2.0)
    D, N, R, K, L = block.d_inner, block.d_state, block.dt_rank, block.num_directions, H * W
    res = count_flops(block, (torch.randn(1, C, H, W), ))
    hand = (L * C * D           # in_proj (1x1 conv)
            + L * D * 9         # depthwise 3x3 conv
            + K * (R + 2 * N) * D * L  # x_proj einsum
            + K * R * D * L     # dt_proj einsum
            + 9 * K * D * N * L + K * D * L  # the scan (with D)
            + 5 * D * L         # out_norm LayerNorm (affine)
            + L * D * C)        # out_proj (1x1 conv)
    assert res['scan_flops'] == 9 * K * D * N * L + K * D * L
    assert res['flops'] == hand


def _tiny_cls_config(tmp_path):
    cfg = tmp_path / 'tiny_cls.py'
    cfg.write_text(
        f"_base_ = ['{ROOT}/configs/vmamba_t_in1k_cls.py']\n"
        "model = dict(backbone=dict(arch=dict(_delete_=True, depths=(1, 1, 1, 1), dims=8)),\n"
        "             head=dict(in_channels=64, num_classes=10))\n")
    return str(cfg)


def test_config_flops_and_cli_json(tmp_path):

    cfg = _tiny_cls_config(tmp_path)
    res = config_flops(cfg, (32, 32))
    assert res['scope'] == 'mmpretrain' and res['shape'] == (32, 32)
    assert set(res['by_module']) == {'backbone', 'neck', 'head'}
    assert res['by_module']['head'] == 64 * 10
    assert 0 < res['scan_flops'] < res['flops'] == sum(res['by_module'].values())
    out = subprocess.run(
        [sys.executable, osp.join(ROOT, 'tools/analysis/get_flops.py'), cfg, '--shape', '32',
         '--json'], capture_output=True, text=True, cwd=ROOT, timeout=300)
    assert out.returncode == 0, out.stderr[-3000:]
    lines = out.stdout.strip().splitlines()
    assert any(line.startswith('FLOPs:') for line in lines)
    data = json.loads(lines[-1])
    assert data['shape'] == [32, 32]
    assert math.isclose(data['flops_g'], round(res['flops'] / 1e9, 3))
    assert math.isclose(data['params_m'], round(res['params'] / 1e6, 3))


def test_config_flops_bad_input(tmp_path, capsys):

    cfg = _tiny_cls_config(tmp_path)
    with pytest.raises(ValueError, match='shape'):
        config_flops(cfg, (32, 0))
    bad = tmp_path / 'no_scope.py'
    bad.write_text("model = dict(type='ImageClassifier')\n")
    with pytest.raises(ValueError, match='default_scope'):
        config_flops(str(bad))
    spec = importlib.util.spec_from_file_location(
        'get_flops', osp.join(ROOT, 'tools/analysis/get_flops.py'))
    tool = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(tool)
    with pytest.raises(SystemExit):
        tool.main([str(tmp_path / 'missing.py')])
    assert 'config file not found' in capsys.readouterr().err
    with pytest.raises(SystemExit):
        tool.main([cfg, '--shape', '1', '2', '3'])
    assert '--shape takes H W' in capsys.readouterr().err
