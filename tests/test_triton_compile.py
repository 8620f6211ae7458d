"""The Triton kernels compile for sm_80 / sm_90 at the models' real shapes, with
no register spills and shared memory within the architecture's limit.

Triton's compiler needs no GPU: ``tools/compile_kernels.py`` builds every
specialisation that VMamba-T/S/B and Vim-Ti/S launch (both layouts, z on and
off, forward with and without saved states, backward, cross-scan/merge) and
reads ``ptxas -v``. It runs in a subprocess because the test session's
``TRITON_INTERPRET=1`` turns the kernels into interpreted functions.
"""
import json
import os
import subprocess
import sys

import pytest
import torch

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def _compile(*flags):
    env = {k: v for k, v in os.environ.items() if k != 'TRITON_INTERPRET'}
    res = subprocess.run([sys.executable, os.path.join(ROOT, 'tools', 'compile_kernels.py'),
                          *flags, '--json', '-'], env=env, cwd=ROOT, capture_output=True,
                         text=True, timeout=1800)
    assert res.stdout, res.stderr[-3000:]
    doc = json.loads(res.stdout)
    assert doc['specialisations'] == len(doc['records'])
    return doc['records'], res


def _check(records, archs, dtypes):
    assert {r['arch'] for r in records} == set(archs)
    bad = [r for r in records if r['spill_stores'] or r['spill_loads']]
    assert not bad, f'register spills: {bad[:3]}'
    big = [r for r in records if r['shared'] > r['shared_limit']]
    assert not big, f'shared memory over the limit: {big[:3]}'
    assert all(r['registers'] <= 255 for r in records)
    labels = ' '.join(label for r in records for label in r['launches'])
    for what in ('scan_fwd', 'scan_bwd', 'cross_scan', 'cross_merge', 'channel_major',
                 'time_major', 'z=True', 'z=False', 'save=False', 'vmamba_b', 'vim_s d1536 L6085',
                 *dtypes):
        assert what in labels, f'no launch with {what!r} was compiled'
    assert {r['constexprs'].get('N') for r in records} >= {1, 16}


@pytest.mark.skipif(torch.cuda.is_available(), reason='a CUDA machine runs the kernels for real')
def test_kernels_compile_for_sm90_bf16():
    """The quick matrix (bf16, sm_90) in the default run."""
    pytest.importorskip('triton')
    records, res = _compile('--arch', '90', '--quick')
    assert res.returncode == 0, res.stderr[-3000:]
    _check(records, [90], ['bfloat16'])


@pytest.mark.slow
@pytest.mark.skipif(torch.cuda.is_available(), reason='a CUDA machine runs the kernels for real')
def test_kernels_compile_for_sm80_sm90_all_dtypes():
    """The full matrix: sm_80 and sm_90, fp32/fp16/bf16 (a few minutes on 2 cores)."""
    pytest.importorskip('triton')
    records, res = _compile('--arch', '80', '90')
    assert res.returncode == 0, res.stderr[-3000:]
    _check(records, [80, 90], ['float32', 'float16', 'bfloat16'])
