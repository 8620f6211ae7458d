"""The GPU install's plan (tools/build_mmcv_cuda.py, ``FORCE_CUDA=1 bash tools/setup_env.sh``),
checked in seconds without building: the compiler wheels match torch's CUDA, the
architecture list and flags, every refusal, the toolkit layout, the kernel check, and the
dry run. The build itself (about an hour on 2 cores) is the opt-in check of docs/testing.md;
its record is docs/benchmarks/mmcv_cuda_build.json."""
import json
import os
import os.path as osp
import re
import subprocess
import sys
import zipfile

import pytest
import torch

ROOT = osp.dirname(osp.dirname(osp.abspath(__file__)))
sys.path.insert(0, osp.join(ROOT, 'tools'))
import build_mmcv_cuda as bmc  # noqa: E402

GCC12 = ('/usr/bin/c++', 12, 'c++ (Debian 12.2.0) 12.2.0')
TORCH = {'version': '2.13.0+cu130', 'cuda': '13.0', 'requires_toolkit': '13.0.3'}


def cuda_pins():
    return bmc.read_requirements(osp.join(ROOT, 'requirements-cuda.txt'))


def plan(tmp_path, env=(), torch_info=TORCH, gpus=(), compiler=GCC12):
    env = {'VMAMBA_MM_CACHE': str(tmp_path / 'cache'), **dict(env)}
    return bmc.make_plan(env=env, torch=torch_info, gpu_archs=list(gpus), compiler=compiler)


def fake_nvcc(tmp_path, release):
    """A toolkit directory whose bin/nvcc reports CUDA ``release`` (e.g. '12.4.131')."""
    home = tmp_path / f'cuda-{release}'
    (home / 'bin').mkdir(parents=True)
    nvcc = home / 'bin' / 'nvcc'
    major_minor = '.'.join(release.split('.')[:2])
    nvcc.write_text('#!/bin/sh\necho "nvcc: NVIDIA (R) Cuda compiler driver"\n'
                    f'echo "Cuda compilation tools, release {major_minor}, V{release}"\n')
    nvcc.chmod(0o755)
    return home


def test_toolkit_pin_is_the_cuda_torch_is_built_for():
    extras, version = bmc.pinned(cuda_pins(), 'cuda-toolkit', 'requirements-cuda.txt')
    assert {'nvcc', 'cccl'} <= set(extras.strip('[]').split(','))
    assert version.split('.')[:2] == torch.version.cuda.split('.')
    required = bmc.torch_info()['requires_toolkit']
    assert required is not None, 'torch from PyPI names the cuda-toolkit it was built with'
    assert bmc._norm(required) == bmc._norm(version)
    _, cuobjdump = bmc.pinned(cuda_pins(), 'nvidia-cuda-cuobjdump', 'requirements-cuda.txt')
    assert cuobjdump.split('.')[0] == version.split('.')[0]


def test_plan_on_this_machine_uses_the_installed_torch(tmp_path):
    p = bmc.make_plan(env={'VMAMBA_MM_CACHE': str(tmp_path)}, gpu_archs=[])
    assert p['torch']['version'] == torch.__version__
    assert p['torch']['cuda'] == torch.version.cuda
    assert p['toolkit']['source'] == 'pip wheels'
    assert p['toolkit']['wheel_prefix'].endswith(
        osp.join('site-packages', 'nvidia', 'cu' + torch.version.cuda.split('.')[0]))


def test_default_plan_two_archs_and_flags(tmp_path):
    p = plan(tmp_path)
    assert p['arch_list'] == '8.0;9.0' and p['archs'] == ['sm_80', 'sm_90']
    assert p['arch_source'] == 'default (no GPU visible)'
    home = str(tmp_path / 'cache' / 'cuda-13.0.3')
    assert p['toolkit'] == {'source': 'pip wheels', 'version': '13.0.3', 'cuda_home': home,
                            'wheel_prefix': bmc.wheel_site_prefix(13), 'packages': cuda_pins()}
    assert p['build_env'] == {'FORCE_CUDA': '1', 'MMCV_WITH_OPS': '1', 'CUDA_HOME': home,
                              'TORCH_CUDA_ARCH_LIST': '8.0;9.0', 'MAX_JOBS': '2',
                              'MMCV_CXX_STD': 'c++17'}
    assert p['patch'] == 'tools/patches/mmcv-2.1.0.patch'
    steps = '\n'.join(p['steps'])
    assert "install 'cuda-toolkit[nvcc,cccl]==13.0.3' nvidia-cuda-cuobjdump==" in steps
    assert 'git apply tools/patches/mmcv-2.1.0.patch' in steps
    # pip's wheel cache keys on the source, not on FORCE_CUDA: a cached CPU build must
    # never stand in for the CUDA one.
    assert '--no-cache-dir' in steps and '--no-build-isolation' in steps
    assert 'SASS for sm_80, sm_90 in roi_align_forward_cuda_kernel, ' \
        'roi_align_backward_cuda_kernel, nms_cuda, gather_keep_from_mask' in steps
    assert p['wheel_dir'].startswith(str(tmp_path / 'cache' / 'wheels' / 'mmcv-2.1.0_torch'))


def test_wheel_cache_key_follows_every_setting(tmp_path):
    base = plan(tmp_path)['wheel_dir']
    assert plan(tmp_path)['wheel_dir'] == base
    changed = [plan(tmp_path, {'TORCH_CUDA_ARCH_LIST': '9.0'}),
               plan(tmp_path, {'MMCV_CXX_STD': 'c++20'}),
               plan(tmp_path, {'MMCV_CUDA_ARGS': '-lineinfo'}),
               plan(tmp_path, torch_info={**TORCH, 'version': '2.13.1+cu130'})]
    dirs = [p['wheel_dir'] for p in changed]
    assert len(set(dirs + [base])) == 5
    assert plan(tmp_path, {'MAX_JOBS': '8'})['wheel_dir'] == base


def test_arch_list_from_gpus_or_environment(tmp_path):
    p = plan(tmp_path, gpus=['9.0'])
    assert (p['arch_list'], p['archs']) == ('9.0', ['sm_90'])
    assert p['arch_source'] == 'the visible GPUs (nvidia-smi)'
    p = plan(tmp_path, {'TORCH_CUDA_ARCH_LIST': '8.6 9.0+PTX'}, gpus=['9.0'])
    assert (p['arch_list'], p['archs']) == ('8.6;9.0+PTX', ['sm_86', 'sm_90'])
    assert p['build_env']['TORCH_CUDA_ARCH_LIST'] == '8.6;9.0+PTX'


def test_system_toolkit_is_used_as_it_is(tmp_path):
    home = fake_nvcc(tmp_path, '13.0.88')
    p = plan(tmp_path, {'CUDA_HOME': str(home)})
    assert p['toolkit'] == {'source': 'system', 'cuda_home': str(home), 'version': '13.0.88',
                            'packages': []}
    assert p['build_env']['CUDA_HOME'] == str(home)
    assert not any('cuda-toolkit' in s for s in p['steps'])


@pytest.mark.parametrize('env,torch_info,compiler,message', [
    ({'TORCH_CUDA_ARCH_LIST': '7.0;9.0'}, TORCH, GCC12,
     "TORCH_CUDA_ARCH_LIST has 7.0: CUDA 13 compiles for 7.5 and newer (nvcc: Unsupported gpu "
     "architecture 'compute_70')"),
    ({'TORCH_CUDA_ARCH_LIST': 'Hopper'}, TORCH, GCC12,
     "TORCH_CUDA_ARCH_LIST item 'Hopper' is not a compute capability"),
    ({'TORCH_CUDA_ARCH_LIST': ' ; '}, TORCH, GCC12, 'TORCH_CUDA_ARCH_LIST is empty'),
    ({'MMCV_CUDA_ARGS': '-lineinfo -gencode=arch=compute_90,code=sm_90'}, TORCH, GCC12,
     "MMCV_CUDA_ARGS has '-gencode=arch=compute_90,code=sm_90', which overrides "
     'TORCH_CUDA_ARCH_LIST'),
    ({'MMCV_CUDA_ARGS': '-arch sm_90'}, TORCH, GCC12, "MMCV_CUDA_ARGS has '-arch'"),
    ({'MMCV_CXX_STD': 'c++14'}, TORCH, GCC12, 'MMCV_CXX_STD=c++14: use c++17 or c++20'),
    ({}, TORCH, ('/usr/bin/c++', 8, 'g++ 8'),
     '/usr/bin/c++ is GCC 8; building against torch in c++17 needs GCC >= 9'),
    ({'MMCV_CXX_STD': 'c++20'}, TORCH, ('/usr/bin/c++', 10, 'g++ 10'),
     'needs GCC >= 11'),
    ({}, {'version': '2.13.0+cpu', 'cuda': None, 'requires_toolkit': None}, GCC12,
     'torch 2.13.0+cpu is a CPU-only build'),
    ({}, {'version': '2.13.0+cu126', 'cuda': '12.6', 'requires_toolkit': None}, GCC12,
     'torch 2.13.0+cu126 is built for CUDA 12.6, but requirements-cuda.txt pins cuda-toolkit '
     '13.0.3 (CUDA 13.0)'),
    ({}, {**TORCH, 'requires_toolkit': '13.0.2'}, GCC12,
     'torch 2.13.0+cu130 requires cuda-toolkit==13.0.2; requirements-cuda.txt pins 13.0.3'),
])
def test_plan_refuses_with_the_reason_and_fix(tmp_path, env, torch_info, compiler, message):
    with pytest.raises(bmc.PlanError) as e:
        plan(tmp_path, env, torch_info=torch_info, compiler=compiler)
    assert message in str(e.value)


def test_system_toolkit_refusals(tmp_path):
    with pytest.raises(bmc.PlanError, match='CUDA_HOME=/no/such/dir has no bin/nvcc'):
        plan(tmp_path, {'CUDA_HOME': '/no/such/dir'})
    home = fake_nvcc(tmp_path, '12.4.131')
    with pytest.raises(bmc.PlanError) as e:
        plan(tmp_path, {'CUDA_HOME': str(home)})
    assert f'the toolkit at {home} is CUDA 12.4.131; torch 2.13.0+cu130 is built for CUDA ' \
        '13.0: torch refuses a toolkit of another major version' in str(e.value)


def test_plan_before_torch_is_installed_assumes_the_pins(tmp_path, monkeypatch):
    monkeypatch.setattr(bmc, 'torch_info', lambda: None)  # a machine without torch yet
    with pytest.raises(bmc.PlanError, match='torch is not installed'):
        bmc.make_plan(env={'VMAMBA_MM_CACHE': str(tmp_path)}, gpu_archs=[], compiler=GCC12)
    p = bmc.make_plan(env={'VMAMBA_MM_CACHE': str(tmp_path)}, gpu_archs=[], compiler=GCC12,
                      assume_torch=True)
    assert p['torch'] == {'version': '2.13.0', 'cuda': '13.0', 'requires_toolkit': None,
                          'assumed': True}
    assert p['toolkit']['wheel_prefix'] == '<environment>/site-packages/nvidia/cu13'


LISTING = """\
SASS text section 1 : x-_ZL8nms_cudaifPKfPy.sm_80.elf.bin
SASS text section 2 : x-_ZL21gather_keep_from_maskPbPKyi.sm_80.elf.bin
SASS text section 3 : x-_Z29roi_align_forward_cuda_kernelIfEviPKT_S2_PS0_.sm_80.elf.bin
SASS text section 4 : x-_Z30roi_align_backward_cuda_kernelIfEviPKT_S2_S2_S2_PS0_.sm_80.elf.bin
SASS text section 5 : x-_ZL21gather_keep_from_maskPbPKyi.sm_90.elf.bin
SASS text section 6 : x-_Z29roi_align_forward_cuda_kernelIfEviPKT_S2_PS0_.sm_90.elf.bin
SASS text section 7 : x-_Z30roi_align_backward_cuda_kernelIfEviPKT_S2_S2_S2_PS0_.sm_90.elf.bin
SASS text section 8 : x-_Z28nms_cuda_kernel_of_another_opPf.sm_90.elf.bin
"""


def test_kernel_check_per_architecture():
    table = bmc.parse_list_text(LISTING)
    assert sorted(table) == ['sm_80', 'sm_90'] and len(table['sm_80']) == 4
    found = bmc.check_kernels(table, ['sm_80'])
    assert found['sm_80']['nms_cuda'] == ['_ZL8nms_cudaifPKfPy']
    assert sorted(found['sm_80']) == sorted(bmc.REQUIRED_KERNELS)
    # sm_90 has only a longer name that starts with nms_cuda (28 characters): not NMS.
    with pytest.raises(bmc.PlanError) as e:
        bmc.check_kernels(table, ['sm_80', 'sm_90'])
    assert 'lacks device code: nms_cuda for sm_90 (architectures in it: sm_80, sm_90)' \
        in str(e.value)
    with pytest.raises(bmc.PlanError, match='roi_align_forward_cuda_kernel for sm_86'):
        bmc.check_kernels(table, ['sm_86'])


def test_wheel_without_compiled_ops_is_refused(tmp_path):
    whl = tmp_path / 'mmcv-2.1.0-cp311-cp311-linux_x86_64.whl'
    with zipfile.ZipFile(whl, 'w') as z:
        z.writestr('mmcv/__init__.py', '')
    with pytest.raises(bmc.PlanError, match='has no mmcv/_ext.*so: the build made no compiled'):
        bmc.ext_so(str(whl), str(tmp_path))
    with zipfile.ZipFile(whl, 'a') as z:
        z.writestr('mmcv/_ext.cpython-311-x86_64-linux-gnu.so', b'\x7fELF')
    so = bmc.ext_so(str(whl), str(tmp_path / 'x'))
    assert so.endswith('mmcv/_ext.cpython-311-x86_64-linux-gnu.so') and osp.isfile(so)


def test_cuda_home_laid_out_from_the_wheels(tmp_path):
    prefix = tmp_path / 'site' / 'nvidia' / 'cu13'
    fake = fake_nvcc(tmp_path, '13.0.88')
    (prefix / 'bin').mkdir(parents=True)
    os.rename(fake / 'bin' / 'nvcc', prefix / 'bin' / 'nvcc')
    (prefix / 'bin' / 'nvcc.profile').write_text('TOP = $(_HERE_)/..\n')
    (prefix / 'include' / 'cccl' / 'nv').mkdir(parents=True)
    (prefix / 'nvvm' / 'bin').mkdir(parents=True)
    (prefix / 'lib').mkdir()
    (prefix / 'lib' / 'libcudart.so.13').write_text('runtime')
    (prefix / 'lib' / 'libnvrtc.so.13').write_text('nvrtc')
    home = tmp_path / 'cache' / 'cuda-13.0.3'
    for _ in range(2):  # idempotent
        bmc.lay_out_cuda_home(str(prefix), str(home), 13)
        assert bmc.nvcc_version(str(home)) == '13.0.88'
        assert osp.isfile(home / 'bin' / 'nvcc.profile')
        assert osp.isdir(home / 'include' / 'cccl' / 'nv') and osp.isdir(home / 'nvvm' / 'bin')
        assert open(home / 'lib64' / 'libcudart.so').read() == 'runtime'
        assert open(home / 'lib64' / 'libnvrtc.so.13').read() == 'nvrtc'
        assert os.readlink(home / 'lib64' / 'libcudart.so') == 'libcudart.so.13'
    os.remove(prefix / 'lib' / 'libcudart.so.13')
    with pytest.raises(bmc.PlanError, match='has no libcudart.so.13'):
        bmc.lay_out_cuda_home(str(prefix), str(home), 13)
    os.rmdir(prefix / 'nvvm' / 'bin')
    os.rmdir(prefix / 'nvvm')
    with pytest.raises(bmc.PlanError, match='cu13/nvvm is missing'):
        bmc.lay_out_cuda_home(str(prefix), str(home), 13)


def test_patch_changes_only_the_cxx_standard(tmp_path):
    """The patch applies (git apply) to the lines it names and changes nothing but the two
    hard-coded -std=c++17 flags, which keep c++17 unless MMCV_CXX_STD is set."""
    text = open(osp.join(ROOT, 'tools', 'patches', 'mmcv-2.1.0.patch')).read()
    removed = [l[1:] for l in text.splitlines() if l.startswith('-') and not l.startswith('---')]
    added = [l[1:] for l in text.splitlines() if l.startswith('+') and not l.startswith('+++')]
    assert [l.strip() for l in removed] == ["extra_compile_args['cxx'] = ['-std=c++17']",
                                            "extra_compile_args['nvcc'] += ['-std=c++17']"]
    code = [l.strip() for l in added if not l.strip().startswith('#')]
    assert code == ["cxx_std = os.getenv('MMCV_CXX_STD', 'c++17')",
                    "extra_compile_args['cxx'] = [f'-std={cxx_std}']",
                    "extra_compile_args['nvcc'] += [f'-std={cxx_std}']"]
    # Rebuild the original lines the hunks name (padded to their line numbers); git apply.
    lines = {}
    for m in re.finditer(r'^@@ -(\d+),\d+ \+\d+,\d+ @@.*\n((?:[ \-+].*\n)*)', text, re.M):
        n = int(m.group(1))
        for line in m.group(2).splitlines():
            if line[0] in ' -':
                lines[n] = line[1:]
                n += 1
    last = max(lines)
    src = tmp_path / 'mmcv'
    src.mkdir()
    (src / 'setup.py').write_text(''.join(lines.get(i, f'# filler {i}') + '\n'
                                          for i in range(1, last + 1)))
    out = subprocess.run(['git', 'apply', '-p1', osp.join(ROOT, 'tools/patches/mmcv-2.1.0.patch')],
                         cwd=src, capture_output=True, text=True)
    assert out.returncode == 0, out.stderr
    patched = (src / 'setup.py').read_text()
    assert patched.count('{cxx_std}') == 2 and '-std=c++17' not in patched


def run_setup(args, env, cwd=ROOT):
    full = {k: v for k, v in os.environ.items()
            if k not in ('FORCE_CUDA', 'TORCH_CUDA_ARCH_LIST', 'CUDA_HOME', 'MMCV_CUDA_ARGS',
                         'MMCV_CXX_STD', 'VMAMBA_MM_CACHE')}
    full.update(env)
    return subprocess.run(['bash', 'tools/setup_env.sh'] + args, cwd=cwd, env=full,
                          capture_output=True, text=True, timeout=120)


def test_setup_env_dry_run_on_a_fresh_machine_prints_every_step(tmp_path):
    link = osp.join(ROOT, '.venv')
    before = os.readlink(link) if osp.islink(link) else None
    cache = tmp_path / 'cache'
    out = run_setup(['--dry-run'], {'FORCE_CUDA': '1', 'VMAMBA_MM_CACHE': str(cache)})
    assert out.returncode == 0, out.stderr
    text = out.stdout
    assert 'dry run: environment' in text and 'mmcv 2.1.0 with CUDA operators' in text
    order = [f'-m venv {cache}/venv', 'install -q torch==2.13.0 torchvision==',
             "install 'cuda-toolkit[nvcc,cccl]==13.0.3'", f'lay out CUDA_HOME={cache}/cuda-13.0.3',
             'git apply tools/patches/mmcv-2.1.0.patch', "TORCH_CUDA_ARCH_LIST='8.0;9.0'",
             'cuobjdump --list-text', 'install -q -r', 'build_cpu_scan']
    positions = [text.find(s) for s in order]
    assert -1 not in positions, [s for s, p in zip(order, positions) if p == -1]
    assert positions == sorted(positions)
    assert not cache.exists()  # nothing created
    assert (os.readlink(link) if osp.islink(link) else None) == before


def test_setup_env_dry_run_cpu_and_bad_arguments(tmp_path):
    out = run_setup(['--dry-run'], {'FORCE_CUDA': '0', 'VMAMBA_MM_CACHE': str(tmp_path / 'c')})
    assert out.returncode == 0, out.stderr
    assert 'mmcv 2.1.0 with CPU operators' in out.stdout
    assert 'CUDA_VISIBLE_DEVICES= MMCV_WITH_OPS=1' in out.stdout
    assert 'cuda-toolkit' not in out.stdout and 'build_mmcv_cuda' not in out.stdout
    out = run_setup(['--dryrun'], {'VMAMBA_MM_CACHE': str(tmp_path / 'c')})
    assert out.returncode == 2 and 'usage: [FORCE_CUDA=0|1] bash tools/setup_env.sh' in out.stderr
    # A refusal of the plan stops the dry run too, with its message.
    out = run_setup(['--dry-run'], {'FORCE_CUDA': '1', 'TORCH_CUDA_ARCH_LIST': '7.0',
                                    'VMAMBA_MM_CACHE': str(tmp_path / 'c')})
    assert out.returncode == 2
    assert 'error: TORCH_CUDA_ARCH_LIST has 7.0: CUDA 13 compiles for 7.5' in out.stderr


def test_cuda_build_follows_force_cuda_then_visible_gpus(tmp_path):
    bin_dir = tmp_path / 'bin'
    bin_dir.mkdir()
    smi = bin_dir / 'nvidia-smi'
    smi.write_text('#!/bin/sh\necho "GPU 0: NVIDIA H100 80GB HBM3 (UUID: GPU-0)"\n')
    smi.chmod(0o755)
    path = f"{bin_dir}:{os.environ['PATH']}"

    def cuda_build(env):
        full = {'PATH': os.environ['PATH'], 'HOME': os.environ.get('HOME', '/tmp'), **env}
        out = subprocess.run(['bash', '-c', 'source tools/setup_env.sh && cuda_build'],
                             cwd=ROOT, env=full, capture_output=True, text=True)
        return out.stdout.strip()

    assert cuda_build({}) == ('1' if subprocess.run(
        'nvidia-smi -L 2>/dev/null | grep -q ^GPU', shell=True).returncode == 0 else '0')
    assert cuda_build({'PATH': path}) == '1'
    assert cuda_build({'PATH': path, 'FORCE_CUDA': '0'}) == '0'
    assert cuda_build({'FORCE_CUDA': '1'}) == '1'


def test_build_record_names_its_kernels():
    """docs/benchmarks/mmcv_cuda_build.json: the proof on this CPU machine, kept."""
    path = osp.join(ROOT, 'docs', 'benchmarks', 'mmcv_cuda_build.json')
    rec = json.load(open(path))
    assert rec['arch_list'] == '8.0;9.0' and rec['gpu_visible'] is False
    assert rec['build_env']['FORCE_CUDA'] == '1' and rec['build_env']['MAX_JOBS'] == '2'
    assert rec['torch_cuda'] == rec['toolkit']['version'].rsplit('.', 1)[0]
    for arch in ('sm_80', 'sm_90'):
        assert sorted(rec['mask_rcnn_kernels'][arch]) == sorted(bmc.REQUIRED_KERNELS)
        assert rec['kernels_per_arch'][arch] > 100
    assert rec['build_seconds'] > 0
