"""Packaging: one source of version pins (setup.py and tools/setup_env.sh read the
requirements files), the LICENSE, the cluster launchers (dry runs with a stand-in
``srun`` / ``python``), and where the benchmark scripts write by default."""
import os
import os.path as osp
import re
import runpy
import subprocess
import sys

import pytest

ROOT = osp.dirname(osp.dirname(osp.abspath(__file__)))


def requirement_lines(name):
    """Requirement lines of a requirements file: comments and blanks dropped."""
    with open(osp.join(ROOT, name)) as f:
        lines = [line.split('#', 1)[0].strip() for line in f]
    return [line for line in lines if line]


@pytest.fixture
def setup_kwargs(monkeypatch):
    """The keyword arguments setup.py passes to setuptools.setup (nothing installed)."""
    import setuptools
    captured = {}
    monkeypatch.setattr(setuptools, 'setup', lambda **kw: captured.update(kw))
    monkeypatch.chdir(ROOT)
    runpy.run_path(osp.join(ROOT, 'setup.py'), run_name='__main__')
    return captured


def test_setup_reads_the_requirements_files(setup_kwargs):
    import vmamba_mm
    runtime = requirement_lines('requirements-runtime.txt')
    assert setup_kwargs['install_requires'] == runtime
    # vmamba_mm itself needs torch, with a lower bound (not the tested pin), and ninja
    # (torch.utils.cpp_extension builds the C++ CPU scan with it).
    assert len(runtime) == 2 and re.fullmatch(r'torch>=\d+\.\d+', runtime[0])
    assert runtime[1] == 'ninja'
    # The C++ source ships with the package (built on first use where it is installed).
    assert setup_kwargs['package_data'] == {'vmamba_mm.ops.selective_scan': ['csrc/*.cpp']}
    assert setup_kwargs['extras_require'] == {'mm': requirement_lines('requirements.txt'),
                                              'deploy': requirement_lines('requirements-deploy.txt')}
    assert 'mmcv==2.1.0' in setup_kwargs['extras_require']['mm']
    assert setup_kwargs['version'] == vmamba_mm.__version__
    assert setup_kwargs['license'] == 'Apache-2.0'
    assert setup_kwargs['license_files'] == ['LICENSE']


def test_installed_torch_meets_the_lower_bound():
    import torch
    bound = requirement_lines('requirements-runtime.txt')[0].split('>=')[1]
    have = tuple(int(p) for p in re.match(r'(\d+)\.(\d+)', torch.__version__).groups())
    assert have >= tuple(int(p) for p in bound.split('.'))


def test_torch_older_than_2_4_is_refused_with_the_reason():
    """On torch 2.1-2.3 (no torch.library.custom_op) the import stops with the version, the
    reason and the fix, not an AttributeError from inside the operators."""
    code = ('import torch\n'
            'del torch.library.custom_op\n'
            'torch.__version__ = "2.3.1+cu121"\n'
            'import vmamba_mm\n')
    out = subprocess.run([sys.executable, '-c', code], cwd=ROOT, capture_output=True, text=True)
    assert out.returncode == 1
    assert 'ImportError: vmamba_mm needs torch >= 2.4 and this is torch 2.3.1+cu121: its ' \
        'operators are registered with torch.library.custom_op' in out.stderr
    assert 'docs/installation.md#torch-21-23' in out.stderr


def test_license_is_apache_2_with_our_copyright():
    with open(osp.join(ROOT, 'LICENSE')) as f:
        text = f.read()
    assert text.splitlines()[0] == 'Copyright 2026 vmamba_mm contributors. All rights reserved.'
    assert 'Apache License' in text and 'Version 2.0, January 2004' in text
    assert 'END OF TERMS AND CONDITIONS' in text
    assert '[yyyy]' not in text and '[name of copyright owner]' not in text
    assert len(text) > 11000  # the full text, not a notice


def bash(script, env=None, cwd=ROOT):
    return subprocess.run(['bash', '-c', script], capture_output=True, text=True, cwd=cwd,
                          env={**os.environ, **(env or {})}, timeout=60)


def test_setup_env_is_valid_bash_and_restates_no_pin():
    assert bash('bash -n tools/setup_env.sh').returncode == 0
    with open(osp.join(ROOT, 'tools/setup_env.sh')) as f:
        code = [line.split('#', 1)[0] for line in f if not line.lstrip().startswith('#')]
    versions = [line for line in code if re.search(r'(==|>=|<=|~=|!=|[<>])\s*\d+(\.\d+)+', line)]
    assert versions == [], f'version literals in setup_env.sh (belong in requirements.txt): {versions}'


def test_setup_env_reads_pins_from_requirements(tmp_path):
    """Sourcing the script defines its helpers and runs nothing."""
    names = ['torch', 'torchvision', 'numpy', 'opencv-python', 'setuptools', 'mmengine', 'mmcv']
    out = bash('source tools/setup_env.sh && for n in ' + ' '.join(names)
               + '; do requirement "$n"; done && pinned_version mmcv')
    assert out.returncode == 0, out.stderr
    lines = requirement_lines('requirements.txt')
    expect = [next(line for line in lines if re.match(rf'{re.escape(n)}([<>=!~;\[]|$)', line))
              for n in names]
    assert out.stdout.splitlines() == expect + ['2.1.0']
    assert not (tmp_path / 'venv').exists()

    # Another requirements file gives other pins: nothing is restated in the script.
    req = tmp_path / 'requirements.txt'
    req.write_text('# comment\nTorch == 9.9.9  # trailing comment\nmm_cv>=1\n')
    out = bash(f'source tools/setup_env.sh && REQ={req} && requirement torch '
               '&& requirement MM-CV')
    assert out.stdout.splitlines() == ['Torch==9.9.9', 'mm_cv>=1']
    out = bash(f'source tools/setup_env.sh && REQ={req} && pinned_version torch')
    assert out.stdout.strip() == '9.9.9'
    out = bash(f'source tools/setup_env.sh && REQ={req} && pinned_version mm-cv')
    assert out.returncode == 1 and "'mm_cv>=1' is not an exact pin" in out.stderr
    out = bash(f'source tools/setup_env.sh && REQ={req} && requirement mmdet')
    assert out.returncode == 1 and f"{req} has no requirement for 'mmdet'" in out.stderr


def test_setup_env_stops_before_installing_on_a_missing_pin(tmp_path):
    """main() reads every pin first: a requirements.txt without mmcv stops the
    script with the file named, before any environment is created."""
    repo = tmp_path / 'repo'
    (repo / 'tools').mkdir(parents=True)
    (repo / 'tools/setup_env.sh').write_text(open(osp.join(ROOT, 'tools/setup_env.sh')).read())
    lines = [line for line in open(osp.join(ROOT, 'requirements.txt')) if 'mmcv' not in line]
    (repo / 'requirements.txt').write_text(''.join(lines))
    out = bash('bash tools/setup_env.sh', env={'VMAMBA_MM_CACHE': str(tmp_path / 'cache')},
               cwd=repo)
    assert out.returncode == 1
    assert f"{repo}/requirements.txt has no requirement for 'mmcv'" in out.stderr
    assert not (tmp_path / 'cache').exists() and not (repo / '.venv').exists()


def fake_command(tmp_path, name):
    """A stand-in executable that prints one ARG:<arg> line per argument."""
    path = tmp_path / 'bin' / name
    path.parent.mkdir(exist_ok=True)
    path.write_text('#!/bin/sh\nfor a in "$@"; do echo "ARG:$a"; done\n'
                    'echo "PYTHONPATH:$PYTHONPATH"\n')
    path.chmod(0o755)
    return path


def args_of(stdout):
    return [line[4:] for line in stdout.splitlines() if line.startswith('ARG:')]


def test_slurm_train_launches_one_task_per_gpu(tmp_path):
    fake_command(tmp_path, 'srun')
    env = {'PATH': f'{tmp_path}/bin:{os.environ["PATH"]}', 'GPUS': '16', 'GPUS_PER_NODE': '8',
           'CPUS_PER_TASK': '4', 'SRUN_ARGS': '--quotatype=auto --exclusive'}
    out = bash('bash tools/slurm_train.sh gpu_part vmamba cfg.py work_dirs/x --amp '
               '--cfg-options "a=1 2"', env=env)
    assert out.returncode == 0, out.stderr
    assert args_of(out.stdout) == [
        '-p', 'gpu_part', '--job-name=vmamba', '--gres=gpu:8', '--ntasks=16',
        '--ntasks-per-node=8', '--cpus-per-task=4', '--kill-on-bad-exit=1',
        '--quotatype=auto', '--exclusive', 'python', '-u', f'{ROOT}/tools/train.py', 'cfg.py',
        '--work-dir', 'work_dirs/x', '--launcher', 'slurm', '--amp', '--cfg-options', 'a=1 2']
    assert f'PYTHONPATH:{ROOT}' in out.stdout


def test_slurm_test_defaults_and_usage(tmp_path):
    fake_command(tmp_path, 'srun')
    env = {'PATH': f'{tmp_path}/bin:{os.environ["PATH"]}'}
    out = bash('unset GPUS GPUS_PER_NODE CPUS_PER_TASK SRUN_ARGS; '
               'bash tools/slurm_test.sh p job cfg.py ckpt.pth --tta', env=env)
    assert out.returncode == 0, out.stderr
    assert args_of(out.stdout) == [
        '-p', 'p', '--job-name=job', '--gres=gpu:8', '--ntasks=8', '--ntasks-per-node=8',
        '--cpus-per-task=5', '--kill-on-bad-exit=1', 'python', '-u', f'{ROOT}/tools/test.py',
        'cfg.py', 'ckpt.pth', '--launcher', 'slurm', '--tta']
    for script in ('slurm_train.sh', 'slurm_test.sh'):
        out = bash(f'bash tools/{script} p job cfg.py', env=env)
        assert out.returncode == 2 and 'usage:' in out.stderr


def test_dist_train_multi_node_arguments(tmp_path):
    python = fake_command(tmp_path, 'python')
    env = {'PYTHON': str(python), 'NNODES': '2', 'NODE_RANK': '1', 'MASTER_ADDR': '10.0.0.1',
           'PORT': '29999'}
    out = bash('bash tools/dist_train.sh cfg.py 8 --amp', env=env)
    assert out.returncode == 0, out.stderr
    assert args_of(out.stdout) == [
        '-m', 'torch.distributed.run', '--nnodes=2', '--node_rank=1', '--master_addr=10.0.0.1',
        '--master_port=29999', '--nproc_per_node=8', f'{ROOT}/tools/train.py', 'cfg.py',
        '--launcher', 'pytorch', '--amp']
    out = bash('unset NNODES NODE_RANK MASTER_ADDR PORT; bash tools/dist_test.sh cfg.py ck.pth 2',
               env={'PYTHON': str(python)})
    assert args_of(out.stdout)[2:7] == ['--nnodes=1', '--node_rank=0', '--master_addr=127.0.0.1',
                                        '--master_port=29500', '--nproc_per_node=2']


def load_tool(name):
    sys.path.insert(0, osp.join(ROOT, 'tools'))
    try:
        return __import__(name)
    finally:
        sys.path.pop(0)


def test_benchmarks_write_under_work_dirs_by_default(tmp_path, monkeypatch):
    """Run from a scratch directory: the records land in ./work_dirs/benchmarks/,
    never in docs/benchmarks/ (the kept records)."""
    monkeypatch.chdir(tmp_path)
    load_tool('benchmark_scan').main(['--shapes', 'vim_s_224', '--quick', '--backends', 'torch',
                                      '--batch', '1'])
    assert (tmp_path / 'work_dirs/benchmarks/scan_cpu.json').is_file()
    load_tool('benchmark_backbones').main(['--rounds', '1', '--warmup', '0', '--size', '32'])
    assert (tmp_path / 'work_dirs/benchmarks/backbones_cpu.json').is_file()
    assert not (tmp_path / 'docs').exists()


def build_config_model(path):
    import importlib

    from mmengine.registry import init_default_scope

    from vmamba_mm.runner import load_config, register_scope, task_scope
    cfg = load_config(path)
    scope = task_scope(cfg)
    register_scope(scope)
    init_default_scope(scope)
    return importlib.import_module(f'{scope}.registry').MODELS.build(cfg.model)


def test_metafile_lists_every_config():
    import glob

    import yaml
    with open(osp.join(ROOT, 'metafile.yml')) as f:
        meta = yaml.safe_load(f)
    collections = {c['Name']: c for c in meta['Collections']}
    assert set(collections) == {'VMamba', 'Vim'}
    assert collections['VMamba']['Paper']['URL'] == 'https://arxiv.org/abs/2401.10166'
    assert collections['Vim']['Paper']['URL'] == 'https://arxiv.org/abs/2401.09417'
    configs = sorted(osp.relpath(p, ROOT)
                     for p in glob.glob(osp.join(ROOT, 'configs/**/*.py'), recursive=True)
                     if '/_base_/' not in p)  # shared pieces, not models
    models = meta['Models']
    assert sorted(m['Config'] for m in models) == configs
    for m in models:
        assert m['Name'] == osp.splitext(osp.basename(m['Config']))[0]
        assert m['In Collection'] in collections
        for key in ('FLOPs', 'Parameters'):
            assert isinstance(m['Metadata'][key], int) and m['Metadata'][key] > 0, (m['Name'], key)
        for result in m.get('Results', []):
            assert set(result) == {'Task', 'Dataset', 'Metrics'} and result['Metrics']
        assert m.get('Weights', 'https://').startswith('https://')
    by_name = {m['Name']: m for m in models}
    # same model, other schedule / augmentation
    for size in 'ts':
        one, three = by_name[f'mask_rcnn_vmamba_{size}_1x'], by_name[f'mask_rcnn_vmamba_{size}_3x_ms']
        assert one['Metadata']['FLOPs'] == three['Metadata']['FLOPs']
        assert one['Metadata']['Parameters'] == three['Metadata']['Parameters']
    assert by_name['vmamba_t_in1k_cls']['Metadata']['Parameters'] == 30249064
    assert by_name['vim_ti_in1k_cls']['Metadata']['Parameters'] == 7148008


CHEAP_CONFIGS = ['configs/vmamba_t_in1k_cls.py', 'configs/vim_ti_in1k_cls.py',
                 'configs/upernet_vim_t_160k_ade20k.py', 'configs/demo/mask_rcnn_vmamba_toy.py',
                 'configs/demo/upernet_vmamba_toy.py', 'configs/demo/mask_rcnn_vim_toy.py',
                 'configs/demo/upernet_vim_toy.py']


@pytest.mark.slow
def test_metafile_counts_match_the_built_models():
    import yaml
    with open(osp.join(ROOT, 'metafile.yml')) as f:
        meta = {m['Config']: m['Metadata'] for m in yaml.safe_load(f)['Models']}
    for path in CHEAP_CONFIGS:
        model = build_config_model(osp.join(ROOT, path))
        assert meta[path]['Parameters'] == sum(p.numel() for p in model.parameters()), path
    # FLOPs as tools/analysis/get_flops.py counts them (its default input size)
    from vmamba_mm.flops import config_flops
    res = config_flops(osp.join(ROOT, 'configs/vim_ti_in1k_cls.py'))
    assert meta['configs/vim_ti_in1k_cls.py']['FLOPs'] == res['flops']
