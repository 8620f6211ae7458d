"""What holds and must keep holding: 2-process gloo DDP trains like one process
with the same total batch, and bf16 autocast trains VMamba and Vim on CPU."""
import os
import os.path as osp
import socket
import subprocess
import sys

import pytest
import torch
import torch.nn as nn

from toy_classifier import ROOT, make_images, write_config
from vmamba_mm.models.vim import Vim
from vmamba_mm.models.vmamba import VMamba


def free_port():
    with socket.socket() as s:
        s.bind(('127.0.0.1', 0))
        return s.getsockname()[1]


def run(args, env=None):
    full_env = dict(os.environ, PYTHONPATH=ROOT, OMP_NUM_THREADS='1', **(env or {}))
    proc = subprocess.run(args, cwd=ROOT, env=full_env, capture_output=True, text=True,
                          timeout=600)
    out = proc.stdout + proc.stderr
    assert proc.returncode == 0, f'{args} failed ({proc.returncode}):\n{out[-6000:]}'
    return out


@pytest.mark.slow
def test_ddp_two_cpu_processes_equal_one_process(tmp_path):
    """Batch 4 in one process vs 2 x 2 on two gloo processes (no random augmentation,
    no drop path; DefaultSampler gives the two ranks the halves of the same 4 images):
    weights and AdamW state agree after each of 2 epochs (measured: within 1.2e-7)."""
    data = make_images(str(tmp_path / 'data'))
    single = write_config(tmp_path / 'one.py', data, max_epochs=2, batch_size=4, augment=False,
                          drop_path_rate=0.0)
    dist = write_config(tmp_path / 'two.py', data, max_epochs=2, batch_size=2, augment=False,
                        drop_path_rate=0.0)
    run([sys.executable, osp.join(ROOT, 'tools', 'train.py'), single, '--work-dir',
         str(tmp_path / 'one')])
    out = run(['bash', osp.join(ROOT, 'tools', 'dist_train.sh'), dist, '2', '--work-dir',
               str(tmp_path / 'two')], env=dict(PYTHON=sys.executable, PORT=str(free_port())))
    assert 'Distributed training: True' in out and "'backend': 'gloo'" in out
    for epoch in (1, 2):
        a = torch.load(tmp_path / 'one' / f'epoch_{epoch}.pth', map_location='cpu',
                       weights_only=True)
        b = torch.load(tmp_path / 'two' / f'epoch_{epoch}.pth', map_location='cpu',
                       weights_only=True)
        assert a['meta']['iter'] == b['meta']['iter'] == 2 * epoch
        assert len(b['meta']['rng_states']) == 2  # one per process
        assert a['state_dict'].keys() == b['state_dict'].keys()
        for k in a['state_dict']:
            torch.testing.assert_close(b['state_dict'][k], a['state_dict'][k], rtol=1e-5,
                                       atol=1e-6, msg=f'epoch {epoch}: {k}')
        for pid, state in a['optimizer']['state'].items():
            for k, v in state.items():
                torch.testing.assert_close(b['optimizer']['state'][pid][k], v, rtol=1e-4,
                                           atol=1e-7, msg=f'epoch {epoch}: optimizer {pid} {k}')


class Classifier(nn.Module):
    def __init__(self, backbone, width):
        super().__init__()
        self.backbone, self.head = backbone, nn.Linear(width, 2)

    def forward(self, x):
        feat = self.backbone(x)[-1]
        return self.head(feat.mean((2, 3)) if feat.dim() == 4 else feat)


# 100 steps (the measurement this guards) pass too, in about 75 s per model on 2 busy
# CPU cores; 30 keep the suite fast.
BF16_STEPS = 30


@pytest.mark.parametrize('name', ['vmamba', 'vim'])
def test_bf16_autocast_cpu_training_stays_finite(name):
    """BF16_STEPS AdamW steps of a tiny classifier under torch.autocast('cpu',
    bfloat16): every loss, gradient and weight finite, and the loss goes down."""
    torch.manual_seed(0)
    if name == 'vmamba':
        model = Classifier(VMamba(arch=dict(depths=[1, 1], dims=8, d_state=1),
                                  drop_path_rate=0.1, out_indices=(1, )), 16)
    else:
        model = Classifier(Vim(arch=dict(embed_dims=16, num_layers=2, d_state=4, expand=1),
                               img_size=32, patch_size=8, drop_path_rate=0.1), 16)
    opt = torch.optim.AdamW(model.parameters(), lr=3e-3)
    x = torch.randn(8, 3, 32, 32)
    y = (x.mean((1, 2, 3)) > 0).long()
    losses = []
    for _ in range(BF16_STEPS):
        with torch.autocast('cpu', dtype=torch.bfloat16):
            loss = nn.functional.cross_entropy(model(x), y)
        opt.zero_grad()
        loss.backward()
        assert all(torch.isfinite(p.grad).all() for p in model.parameters() if p.grad is not None)
        opt.step()
        losses.append(loss.item())
    assert all(torch.isfinite(torch.tensor(losses)))
    assert all(torch.isfinite(p).all() for p in model.parameters())
    assert sum(losses[-5:]) < sum(losses[:5])
