"""tools/gpu_check.py: the --smoke dry run (CPU, torch backend + Triton
interpreter) produces every stage's records, and the CLI / recorder behave."""
import importlib.util
import json
import os
import subprocess
import sys

import pytest

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
SCRIPT = os.path.join(ROOT, 'tools', 'gpu_check.py')


def _load():
    spec = importlib.util.spec_from_file_location('gpu_check', SCRIPT)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def _run(out, *flags):
    env = dict(os.environ, PYTHONPATH=ROOT)
    return subprocess.run([sys.executable, SCRIPT, '--out', str(out), *flags], cwd=ROOT,
                          env=env, capture_output=True, text=True, timeout=900)


def _stage(out, name):
    with open(os.path.join(out, f'{name}.json')) as f:
        return json.load(f)


def test_smoke_run_records_every_stage(tmp_path):
    res = _run(tmp_path, '--smoke')
    log = res.stdout[-3000:] + res.stderr[-3000:]
    with open(tmp_path / 'summary.json') as f:
        summary = json.load(f)['stages']
    gpu_check = _load()
    assert list(summary) == list(gpu_check.STAGES), log
    for name in ('env', 'correctness_ops', 'correctness_models', 'bench_scan',
                 'mixed_precision', 'tune_tiles'):
        assert summary[name] == 'ok', f'{name}: {_stage(tmp_path, name)["errors"]}\n{log}'

    ops = _stage(tmp_path, 'correctness_ops')['records']
    assert {(r['op'], r['layout']) for r in ops} == {
        (op, layout) for op in ('selective_scan', 'cross_scan_merge')
        for layout in ('channel_major', 'time_major')}
    assert all(r['ok'] for r in ops)
    scan_errs = [r['rel_err'] for r in ops if r['op'] == 'selective_scan']
    assert all({'out', 'last_state', 'du', 'ddelta', 'dA', 'dB', 'dC', 'dD', 'dz',
                'ddelta_bias'} <= set(e) for e in scan_errs)

    models = _stage(tmp_path, 'correctness_models')['records']
    assert {r['model'] for r in models} == {'vmamba', 'vim'}
    assert all(r['ok'] and r['max_grad_rel_err'] < 1e-3 for r in models)

    bench = _stage(tmp_path, 'bench_scan')['records']
    assert bench[0]['what'] == 'copy' and bench[0]['bytes_per_s'] > 0
    runs = {(r['backend'], r['layout']) for r in bench[1:]}
    assert runs >= {('triton', 'channel_major'), ('triton', 'time_major'),
                    ('torch', 'channel_major')}
    assert all(r['fwd_s'] > 0 and r['fwd_bwd_s'] > 0 and 'speedup_vs_torch' in r
               for r in bench[1:])

    backbones = _stage(tmp_path, 'bench_backbones')
    got = {(r['model'], r['mode']) for r in backbones['records']}
    assert {('VMamba-T', 'inference'), ('VMamba-T', 'train'), ('Vim-Ti', 'inference')} <= got
    if importlib.util.find_spec('timm') is not None:
        assert summary['bench_backbones'] == 'ok', backbones['errors']
        assert ('swin_tiny_patch4_window7_224', 'train') in got
    else:  # only the timm baselines may fail, and they say why
        assert backbones['errors'] and all("No module named 'timm'" in e['error']
                                           for e in backbones['errors'])

    amp = _stage(tmp_path, 'mixed_precision')['records']
    assert {(r['model'], r['dtype']) for r in amp} == {
        (m, d) for m in ('vmamba', 'vim') for d in ('float16', 'bfloat16')}
    assert all(r['steps'] == 3 and r['nonfinite_losses'] == 0 for r in amp)
    tune = _stage(tmp_path, 'tune_tiles')['records']
    assert {r['layout'] for r in tune} == {'channel_major', 'time_major'}


def test_only_skip_and_unknown_stage(tmp_path):
    res = _run(tmp_path, '--smoke', '--only', 'env,bench_scan', '--skip', 'bench_scan')
    assert res.returncode == 0, res.stderr[-2000:]
    assert sorted(os.listdir(tmp_path)) == ['env.json', 'summary.json']
    env = _stage(tmp_path, 'env')
    assert env['status'] == 'ok' and env['records'][0]['versions']['torch']
    # A later run into the same folder adds to the summary.
    _run(tmp_path, '--smoke', '--only', 'bench_scan', '--budget-s', '0')
    with open(tmp_path / 'summary.json') as f:
        summary = json.load(f)
    assert summary['stages'] == {'env': 'ok', 'bench_scan': 'not_run (budget)'}
    assert len(summary['runs']) == 2
    res = _run(tmp_path, '--smoke', '--only', 'nope')
    assert res.returncode == 2 and "unknown stages ['nope']" in res.stderr


def test_recorder_keeps_going_after_a_failure(tmp_path):
    gpu_check = _load()
    rec = gpu_check.Recorder(str(tmp_path), 'demo', meta={})
    with rec.guard('first'):
        raise RuntimeError('boom')
    with rec.guard('second'):
        rec.add(value=1.0)
    rec.finish('partial')
    data = _stage(tmp_path, 'demo')
    assert data['status'] == 'partial'
    first = data['errors'][0]
    assert first['label'] == 'first' and 'RuntimeError: boom' in first['error']
    assert data['records'] == [{'value': 1.0}]


def test_budget_stops_stages(tmp_path):
    res = _run(tmp_path, '--smoke', '--only', 'env,correctness_ops', '--budget-s', '0')
    with open(tmp_path / 'summary.json') as f:
        summary = json.load(f)['stages']
    assert summary == {'env': 'not_run (budget)', 'correctness_ops': 'not_run (budget)'}
    assert res.returncode == 1


@pytest.mark.parametrize('name', ['make_wheels.sh', 'run_check.sh'])
def test_gpu_scripts_are_valid_bash(name):
    path = os.path.join(ROOT, 'tools', 'gpu', name)
    assert subprocess.run(['bash', '-n', path]).returncode == 0
