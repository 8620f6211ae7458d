"""Build mmcv with its CUDA operators against the installed torch, and prove the result.

``FORCE_CUDA=1 bash tools/setup_env.sh`` runs ``build``; no system CUDA toolkit is needed:
NVIDIA's compiler and runtime come as pip wheels (requirements-cuda.txt, the version torch
itself requires), laid out as the toolkit torch expects. A toolkit named by ``CUDA_HOME`` is
used as it is. No GPU is needed to build::

    python tools/build_mmcv_cuda.py plan                 # every step and flag, changes nothing
    python tools/build_mmcv_cuda.py build [--record docs/benchmarks/mmcv_cuda_build.json]
    python tools/build_mmcv_cuda.py verify WHEEL_OR_SO   # its kernels per architecture

Settings (environment): ``TORCH_CUDA_ARCH_LIST`` (default: the visible GPUs' compute
capabilities, else ``8.0;9.0``), ``CUDA_HOME`` (a system toolkit), ``MAX_JOBS`` (default 2),
``MMCV_CXX_STD`` (default ``c++17``), ``MMCV_CUDA_ARGS`` (extra nvcc flags; no architecture
flags), ``VMAMBA_MM_CACHE`` (default ``~/.cache/vmamba_mm``: toolkit layout, sources, wheels).

A wheel is installed only after ``cuobjdump`` has found device code for every architecture of
the list in the kernels Mask R-CNN runs (RoIAlign forward / backward, NMS); anything missing or
mismatched (toolkit version, architecture, compiler) stops with a message naming it and the fix.
"""
import argparse
import hashlib
import importlib.metadata as md
import json
import os
import os.path as osp
import platform
import re
import shlex
import shutil
import subprocess
import sys
import sysconfig
import tarfile
import tempfile
import time
import zipfile

ROOT = osp.dirname(osp.dirname(osp.abspath(__file__)))
PATCH = osp.join(ROOT, 'tools', 'patches', 'mmcv-{version}.patch')
DEFAULT_ARCHS = '8.0;9.0'
DEFAULT_CXX_STD = 'c++17'
# The oldest architecture each CUDA major compiles for (nvcc --list-gpu-arch).
MIN_ARCH = {11: (3, 5), 12: (5, 0), 13: (7, 5)}
# GCC that builds torch >= 2.4 extensions in C++17 (and C++20).
MIN_GCC = {'c++17': 9, 'c++20': 11}
# Kernels Mask R-CNN runs from mmcv/_ext: RoIAlign (RoI extractor, mask targets) and NMS
# (RPN and bbox post-processing through batched_nms).
REQUIRED_KERNELS = ('roi_align_forward_cuda_kernel', 'roi_align_backward_cuda_kernel',
                    'nms_cuda', 'gather_keep_from_mask')
ARCH_FLAGS = ('-arch', '--gpu-architecture', '-gencode', '--generate-code', '-code',
              '--gpu-code')


class PlanError(RuntimeError):
    """Something missing or mismatched: the message names it and the fix."""


def log(msg):
    print(f'[mmcv-cuda] {msg}', flush=True)


# --------------------------------------------------------------------------------------
# Reading the pins and the machine


def read_requirements(path):
    """Requirement lines of a requirements file (comments and blanks dropped)."""
    if not osp.isfile(path):
        raise PlanError(f'{path} is missing')
    lines = []
    with open(path) as f:
        for line in f:
            line = line.split('#', 1)[0].strip()
            if line:
                lines.append(line)
    return lines


def pinned(lines, name, path):
    """(extras, version) of ``name[extras]==version`` among ``lines``."""
    for line in lines:
        m = re.fullmatch(r'([A-Za-z0-9_.\-]+)(\[[^\]]*\])?==([^\s;]+)', line)
        if m and m.group(1).lower().replace('_', '-') == name:
            return m.group(2) or '', m.group(3)
    raise PlanError(f"{path} has no exact pin '{name}==VERSION'")


def torch_info():
    """torch's version, the CUDA version it was built for, and the cuda-toolkit it requires."""
    try:
        import torch
    except ImportError:
        return None
    toolkit = None
    for req in md.requires('torch') or []:
        m = re.match(r'cuda-toolkit(\[[^\]]*\])?\s*==\s*([0-9.]+)', req)
        if m:
            toolkit = m.group(2)
    return {'version': torch.__version__, 'cuda': torch.version.cuda, 'requires_toolkit': toolkit}


def version_tuple(text):
    """'13.0.88' -> (13, 0): major and minor."""
    return tuple(int(p) for p in text.split('.')[:2])


def _norm(version):
    """'13.0.3.0' -> '13.0.3' (PEP 440 equality ignores trailing zeros)."""
    return re.sub(r'(\.0)+$', '', version)


def visible_gpu_archs():
    """Compute capabilities of the visible GPUs (nvidia-smi; no torch.cuda needed)."""
    smi = shutil.which('nvidia-smi')
    if not smi:
        return []
    try:
        out = subprocess.run([smi, '--query-gpu=compute_cap', '--format=csv,noheader'],
                             capture_output=True, text=True, timeout=30)
    except (OSError, subprocess.TimeoutExpired):
        return []
    if out.returncode != 0:
        return []
    return sorted({line.strip() for line in out.stdout.splitlines() if line.strip()},
                  key=lambda a: version_tuple(a))


def parse_arch_list(text):
    """``'8.0;9.0+PTX'`` -> [('8.0', False), ('9.0', True)]; bad items raise PlanError."""
    items = [a for a in re.split(r'[;\s]+', text.strip()) if a]
    if not items:
        raise PlanError('TORCH_CUDA_ARCH_LIST is empty: set it to the GPUs\' compute '
                        "capabilities, e.g. TORCH_CUDA_ARCH_LIST='8.0;9.0'")
    archs = []
    for item in items:
        m = re.fullmatch(r'(\d+\.\d+)(\+PTX)?', item)
        if not m:
            raise PlanError(f'TORCH_CUDA_ARCH_LIST item {item!r} is not a compute capability '
                            "like 8.0 or 9.0+PTX (names such as 'Hopper' are not accepted here)")
        archs.append((m.group(1), bool(m.group(2))))
    return archs


def host_compiler():
    """(command, GCC major version or None) of the C++ compiler torch's build will call."""
    cxx = os.environ.get('CXX', 'c++')
    path = shutil.which(cxx)
    if not path:
        raise PlanError(f"no C++ compiler: '{cxx}' is not on PATH (install g++, e.g. "
                        "'apt-get install g++', or set CXX)")
    out = subprocess.run([path, '-dumpfullversion', '-dumpversion'], capture_output=True,
                         text=True)
    vers = subprocess.run([path, '--version'], capture_output=True, text=True).stdout
    major = None
    if 'clang' not in vers.lower() and out.returncode == 0 and out.stdout.strip():
        major = int(out.stdout.strip().split('.')[0])
    return path, major, vers.splitlines()[0] if vers else ''


def nvcc_version(cuda_home):
    nvcc = osp.join(cuda_home, 'bin', 'nvcc')
    if not os.access(nvcc, os.X_OK):
        return None
    out = subprocess.run([nvcc, '--version'], capture_output=True, text=True)
    m = re.search(r'release (\d+\.\d+), V([0-9.]+)', out.stdout)
    return m.group(2) if m else None


def wheel_site_prefix(cuda_major):
    """Where NVIDIA's CUDA wheels put a toolkit of this major: site-packages/nvidia/cu13."""
    return osp.join(sysconfig.get_paths()['purelib'], 'nvidia', f'cu{cuda_major}')


# --------------------------------------------------------------------------------------
# The plan


def make_plan(env=None, torch=None, gpu_archs=None, compiler=None, assume_torch=False):
    """Every decision of the build, checked; raises PlanError naming what is wrong.

    ``torch``, ``gpu_archs`` and ``compiler`` default to what this machine has (tests pass
    their own); ``assume_torch`` plans for the pinned torch where none is installed yet.
    """
    env = dict(os.environ if env is None else env)
    torch = torch_info() if torch is None else torch
    gpu_archs = visible_gpu_archs() if gpu_archs is None else gpu_archs
    compiler = host_compiler() if compiler is None else compiler
    cache = env.get('VMAMBA_MM_CACHE', osp.expanduser('~/.cache/vmamba_mm'))
    req_main = osp.join(ROOT, 'requirements.txt')
    req_cuda = osp.join(ROOT, 'requirements-cuda.txt')
    _, mmcv_version = pinned(read_requirements(req_main), 'mmcv', req_main)
    cuda_lines = read_requirements(req_cuda)
    tk_extras, tk_version = pinned(cuda_lines, 'cuda-toolkit', req_cuda)

    if torch is None:
        if not assume_torch:
            raise PlanError('torch is not installed: the CUDA build of mmcv compiles against '
                            'the installed torch (tools/setup_env.sh installs it first)')
        # A dry run before torch is installed: the pinned torch, assumed built for the
        # toolkit's CUDA (checked when the build runs).
        _, torch_pin = pinned(read_requirements(req_main), 'torch', req_main)
        torch = {'version': torch_pin,
                 'cuda': '.'.join(tk_version.split('.')[:2]), 'requires_toolkit': None,
                 'assumed': True}
    if not torch['cuda']:
        raise PlanError(f"torch {torch['version']} is a CPU-only build (torch.version.cuda is "
                        'None): install a CUDA build of the pinned torch (PyPI\'s is one)')
    torch_cuda = version_tuple(torch['cuda'])

    # The toolkit: a system one (CUDA_HOME) as it is, or NVIDIA's wheels.
    if env.get('CUDA_HOME'):
        home = env['CUDA_HOME']
        found = nvcc_version(home)
        if found is None:
            raise PlanError(f'CUDA_HOME={home} has no bin/nvcc: point CUDA_HOME at a CUDA '
                            f"{torch['cuda']} toolkit, or unset it to use NVIDIA's pip wheels "
                            '(requirements-cuda.txt)')
        toolkit = {'source': 'system', 'cuda_home': home, 'version': found,
                   'packages': []}
    else:
        if version_tuple(tk_version) != torch_cuda:
            raise PlanError(
                f"torch {torch['version']} is built for CUDA {torch['cuda']}, but "
                f'requirements-cuda.txt pins cuda-toolkit {tk_version} (CUDA '
                f"{'.'.join(tk_version.split('.')[:2])}): pin the cuda-toolkit of torch's CUDA "
                'there, or set CUDA_HOME to a system toolkit of that version (the older-driver '
                'route in docs/installation.md)')
        if torch['requires_toolkit'] and \
                _norm(torch['requires_toolkit']) != _norm(tk_version):
            raise PlanError(f"torch {torch['version']} requires cuda-toolkit=="
                            f"{torch['requires_toolkit']}; requirements-cuda.txt pins "
                            f'{tk_version}: make them equal')
        major = torch_cuda[0]
        toolkit = {'source': 'pip wheels', 'version': tk_version,
                   'cuda_home': osp.join(cache, f"cuda-{tk_version}"),
                   'wheel_prefix': ('<environment>/site-packages/nvidia/cu%d' % major
                                    if torch.get('assumed') else wheel_site_prefix(major)),
                   'packages': cuda_lines}
    tk = version_tuple(toolkit['version'])
    if tk[0] != torch_cuda[0]:
        raise PlanError(f"the toolkit at {toolkit['cuda_home']} is CUDA {toolkit['version']}; "
                        f"torch {torch['version']} is built for CUDA {torch['cuda']}: torch "
                        'refuses a toolkit of another major version; use a CUDA '
                        f'{torch_cuda[0]}.x toolkit')

    # Architectures.
    if env.get('TORCH_CUDA_ARCH_LIST'):
        arch_text, arch_source = env['TORCH_CUDA_ARCH_LIST'], 'TORCH_CUDA_ARCH_LIST'
    elif gpu_archs:
        arch_text, arch_source = ';'.join(gpu_archs), 'the visible GPUs (nvidia-smi)'
    else:
        arch_text, arch_source = DEFAULT_ARCHS, 'default (no GPU visible)'
    archs = parse_arch_list(arch_text)
    lowest = MIN_ARCH.get(tk[0])
    for arch, _ in archs:
        if lowest and version_tuple(arch) < lowest:
            raise PlanError(
                f'TORCH_CUDA_ARCH_LIST has {arch}: CUDA {tk[0]} compiles for '
                f'{lowest[0]}.{lowest[1]} and newer (nvcc: Unsupported gpu architecture '
                f"'compute_{arch.replace('.', '')}'): drop it, or build with an older toolkit")
    arch_list = ';'.join(a + ('+PTX' if ptx else '') for a, ptx in archs)

    # nvcc flags of our own: none may choose the architecture.
    cuda_args = env.get('MMCV_CUDA_ARGS', '')
    for flag in shlex.split(cuda_args):
        if flag.split('=')[0] in ARCH_FLAGS:
            raise PlanError(f'MMCV_CUDA_ARGS has {flag!r}, which overrides '
                            'TORCH_CUDA_ARCH_LIST: remove it and list the architectures in '
                            'TORCH_CUDA_ARCH_LIST')
    cxx_std = env.get('MMCV_CXX_STD', DEFAULT_CXX_STD)
    if cxx_std not in MIN_GCC:
        raise PlanError(f'MMCV_CXX_STD={cxx_std}: use c++17 or c++20')
    cxx_path, gcc_major, cxx_line = compiler
    if gcc_major is not None and gcc_major < MIN_GCC[cxx_std]:
        raise PlanError(f'{cxx_path} is GCC {gcc_major}; building against torch in {cxx_std} '
                        f'needs GCC >= {MIN_GCC[cxx_std]}: install a newer g++ and set CXX')

    if not shutil.which('git'):
        raise PlanError('git is not on PATH: it applies the patch to mmcv\'s build '
                        '(apt-get install git)')
    patch = PATCH.format(version=mmcv_version)
    if not osp.isfile(patch):
        raise PlanError(f'{patch} is missing (the change to mmcv {mmcv_version}\'s build)')
    with open(patch, 'rb') as f:
        patch_sha = hashlib.sha256(f.read()).hexdigest()[:12]
    jobs = env.get('MAX_JOBS', '2')
    build_env = {'FORCE_CUDA': '1', 'MMCV_WITH_OPS': '1', 'CUDA_HOME': toolkit['cuda_home'],
                 'TORCH_CUDA_ARCH_LIST': arch_list, 'MAX_JOBS': jobs, 'MMCV_CXX_STD': cxx_std}
    if cuda_args:
        build_env['MMCV_CUDA_ARGS'] = cuda_args
    key = hashlib.sha256(json.dumps(
        [mmcv_version, torch['version'], toolkit['version'], arch_list, cxx_std, cuda_args,
         patch_sha], sort_keys=True).encode()).hexdigest()[:12]
    tag = f"mmcv-{mmcv_version}_torch{torch['version']}_cuda{toolkit['version']}_" \
          f"sm{'-'.join(a.replace('.', '') for a, _ in archs)}_{key}"
    plan = {
        'torch': torch, 'toolkit': toolkit, 'mmcv': mmcv_version,
        'arch_list': arch_list, 'arch_source': arch_source,
        'archs': [f"sm_{a.replace('.', '')}" for a, _ in archs],
        'compiler': {'path': cxx_path, 'version': cxx_line, 'gcc_major': gcc_major},
        'patch': osp.relpath(patch, ROOT), 'patch_sha256': patch_sha,
        'build_env': build_env, 'wheel_dir': osp.join(cache, 'wheels', tag),
        'src_dir': osp.join(cache, 'src'), 'required_kernels': list(REQUIRED_KERNELS),
    }
    plan['steps'] = plan_steps(plan)
    return plan


def plan_steps(plan):
    """The commands ``build`` runs, as text."""
    pip = 'python -m pip --isolated --disable-pip-version-check'
    tk = plan['toolkit']
    steps = []
    if tk['source'] == 'pip wheels':
        steps.append(f"{pip} install {' '.join(shlex.quote(p) for p in tk['packages'])}")
        steps.append(f"lay out CUDA_HOME={tk['cuda_home']} from {tk['wheel_prefix']} "
                     '(bin, include, nvvm linked; lib64/ with libcudart.so)')
    env = ' '.join(f'{k}={shlex.quote(v)}' for k, v in plan['build_env'].items())
    steps += [
        f"{pip} download --no-deps --no-binary :all: mmcv=={plan['mmcv']} -d {plan['src_dir']}",
        f"unpack it and git apply {plan['patch']}",
        f"{env} {pip} wheel --no-deps --no-build-isolation --no-cache-dir "
        f"<patched mmcv-{plan['mmcv']}> -w {plan['wheel_dir']}   "
        '(skipped when that directory already holds a verified wheel)',
        f"cuobjdump --list-text <mmcv/_ext*.so of the wheel>: SASS for {', '.join(plan['archs'])} "
        f"in {', '.join(plan['required_kernels'])}; else stop",
        f'{pip} install --no-deps --force-reinstall <the wheel>',
        "python -c 'import mmcv._ext; mmcv.ops.get_compiling_cuda_version()' == "
        f"{plan['torch']['cuda']}; nms and roi_align on CPU tensors",
    ]
    return steps


def print_plan(plan):
    tk = plan['toolkit']
    assumed = ' (not installed yet: assumed)' if plan['torch'].get('assumed') else ''
    log(f"torch {plan['torch']['version']}{assumed} (CUDA {plan['torch']['cuda']}), "
        f"mmcv {plan['mmcv']}")
    log(f"toolkit: CUDA {tk['version']} from {tk['source']}, CUDA_HOME={tk['cuda_home']}")
    log(f"architectures: {plan['arch_list']} ({plan['arch_source']})")
    log(f"host compiler: {plan['compiler']['path']} ({plan['compiler']['version']}), "
        f"{plan['build_env']['MMCV_CXX_STD']}")
    log(f"patch: {plan['patch']} (sha256 {plan['patch_sha256']})")
    for i, step in enumerate(plan['steps'], 1):
        log(f'step {i}: {step}')


# --------------------------------------------------------------------------------------
# Doing it


def run(cmd, **kw):
    log('$ ' + ' '.join(shlex.quote(str(c)) for c in cmd))
    subprocess.run([str(c) for c in cmd], check=True, **kw)


def pip_cmd():
    return [sys.executable, '-m', 'pip', '--isolated', '--disable-pip-version-check']


def lay_out_cuda_home(prefix, home, major):
    """A toolkit directory as torch and nvcc expect it, from the wheels' ``nvidia/cuXX``.

    bin/, include/ and nvvm/ are links (nvcc reads bin/nvcc.profile beside itself and finds
    include/ and include/cccl from it); lib64/ holds a link to each library plus the
    unversioned ``libcudart.so`` the linker needs (the wheels ship ``libcudart.so.13`` only).
    """
    for sub in ('bin', 'include', 'nvvm', 'lib'):
        if not osp.isdir(osp.join(prefix, sub)):
            raise PlanError(f'{prefix}/{sub} is missing after installing the CUDA wheels '
                            '(requirements-cuda.txt): the nvcc extra of cuda-toolkit should '
                            'bring it')
    os.makedirs(home, exist_ok=True)
    for sub in ('bin', 'include', 'nvvm'):
        link = osp.join(home, sub)
        if osp.islink(link) or osp.exists(link):
            os.remove(link) if osp.islink(link) else shutil.rmtree(link)
        os.symlink(osp.join(prefix, sub), link)
    lib64 = osp.join(home, 'lib64')
    shutil.rmtree(lib64, ignore_errors=True)
    os.makedirs(lib64)
    for name in os.listdir(osp.join(prefix, 'lib')):
        os.symlink(osp.join(prefix, 'lib', name), osp.join(lib64, name))
    cudart = osp.join(lib64, f'libcudart.so.{major}')
    if not osp.exists(cudart):
        raise PlanError(f'{prefix}/lib has no libcudart.so.{major} (nvidia-cuda-runtime)')
    os.symlink(f'libcudart.so.{major}', osp.join(lib64, 'libcudart.so'))


def fetch_source(plan, work):
    """mmcv's sdist, unpacked into ``work`` and patched; returns the source directory."""
    os.makedirs(plan['src_dir'], exist_ok=True)
    sdist = osp.join(plan['src_dir'], f"mmcv-{plan['mmcv']}.tar.gz")
    if not osp.isfile(sdist):
        run(pip_cmd() + ['download', '--no-deps', '--no-binary', ':all:', '--no-build-isolation',
                         f"mmcv=={plan['mmcv']}", '-d', plan['src_dir']])
    with tarfile.open(sdist) as tar:
        try:
            tar.extractall(work, filter='data')
        except TypeError:  # Python without extraction filters
            tar.extractall(work)
    src = osp.join(work, f"mmcv-{plan['mmcv']}")
    run(['git', 'apply', '-p1', '--verbose', osp.join(ROOT, plan['patch'])], cwd=src)
    return src


def cuobjdump_path(plan):
    exe = osp.join(plan['toolkit']['cuda_home'], 'bin', 'cuobjdump')
    if os.access(exe, os.X_OK):
        return exe
    exe = shutil.which('cuobjdump')
    if exe:
        return exe
    raise PlanError(f"no cuobjdump in {plan['toolkit']['cuda_home']}/bin or on PATH: it checks "
                    'the built kernels (nvidia-cuda-cuobjdump of requirements-cuda.txt)')


def ext_so(path, work):
    """The mmcv/_ext*.so of a wheel (extracted into ``work``) or the path itself."""
    if not path.endswith('.whl'):
        return path
    with zipfile.ZipFile(path) as z:
        names = [n for n in z.namelist() if re.fullmatch(r'mmcv/_ext[^/]*\.so', n)]
        if not names:
            raise PlanError(f'{path} has no mmcv/_ext*.so: the build made no compiled '
                            'operators (MMCV_WITH_OPS=1 missing?)')
        return z.extract(names[0], work)


def kernel_table(so, cuobjdump):
    """{arch: sorted mangled kernel names} of a binary, from ``cuobjdump --list-text``."""
    out = subprocess.run([cuobjdump, '--list-text', so], capture_output=True, text=True)
    if out.returncode != 0:
        raise PlanError(f'{so} holds no CUDA device code (cuobjdump: {out.stderr.strip()}): '
                        'the build ran without FORCE_CUDA=1 or without a CUDA toolkit')
    return parse_list_text(out.stdout)


def parse_list_text(text):
    """``SASS text section 1 : x-_ZL8nms_cudaifPKfPy.sm_90.elf.bin`` lines -> {arch: names}."""
    table = {}
    for line in text.splitlines():
        m = re.search(r':\s*x-(.+)\.(sm_\d+a?)\.elf\.bin\s*$', line)
        if m:
            table.setdefault(m.group(2), set()).add(m.group(1))
    return {arch: sorted(names) for arch, names in sorted(table.items())}


def kernel_identifiers(table):
    """{kernel function name: instances per arch} over all architectures, from the mangled
    names (``_Z29roi_align_forward_cuda_kernelIfEv...`` -> ``roi_align_forward_cuda_kernel``)."""
    counts = {}
    for arch, names in table.items():
        for name in names:
            m = re.match(r'_ZN?L?(\d+)', name)
            ident = name[m.end():m.end() + int(m.group(1))] if m else name
            # cuobjdump shortens long names to a numbered stem (_Z39corr-191): count by stem.
            ident = re.sub(r'-\d+$', '-N', ident)
            counts.setdefault(ident, {}).setdefault(arch, 0)
            counts[ident][arch] += 1
    return dict(sorted(counts.items()))


def check_kernels(table, archs, required=REQUIRED_KERNELS):
    """Per (arch, kernel) the mangled names found; PlanError when one is missing."""
    found = {}
    missing = []
    for arch in archs:
        names = table.get(arch, [])
        for kernel in required:
            # Itanium mangling: the name is preceded by its length (_ZL8nms_cuda...).
            hits = [n for n in names if re.search(rf'(?<!\d){len(kernel)}{kernel}', n)]
            if hits:
                found.setdefault(arch, {})[kernel] = hits
            else:
                missing.append(f'{kernel} for {arch}')
    if missing:
        raise PlanError(f"the built mmcv/_ext lacks device code: {', '.join(missing)} "
                        f"(architectures in it: {', '.join(table) or 'none'})")
    return found


def verify(plan, path):
    with tempfile.TemporaryDirectory() as work:
        so = ext_so(path, work)
        table = kernel_table(so, cuobjdump_path(plan))
        found = check_kernels(table, plan['archs'])
    return table, found


def check_installed(plan):
    """Import the installed mmcv in a fresh process: CUDA version and the CPU operators."""
    code = (
        'import torch, mmcv, mmcv._ext\n'
        'from mmcv.ops import get_compiling_cuda_version, nms, roi_align\n'
        'v = get_compiling_cuda_version()\n'
        'boxes = torch.tensor([[0., 0, 10, 10], [1, 1, 11, 11], [50, 50, 60, 60]])\n'
        'keep = nms(boxes, torch.tensor([0.9, 0.8, 0.7]), 0.5)[1]\n'
        'assert keep.tolist() == [0, 2], keep\n'
        'x = torch.arange(16.).reshape(1, 1, 4, 4)\n'
        'y = roi_align(x, torch.tensor([[0., 0, 0, 4, 4]]), (2, 2), 1.0, 2, "avg", True)\n'
        'assert torch.allclose(y, x.reshape(1, 1, 2, 2, 2, 2).mean((3, 5)), atol=1e-5), y\n'
        'print(v)\n')
    out = subprocess.run([sys.executable, '-c', code], capture_output=True, text=True)
    if out.returncode != 0:
        raise PlanError(f'the installed mmcv does not import or run its operators:\n'
                        f'{out.stderr.strip()[-2000:]}')
    compiled = out.stdout.strip().splitlines()[-1]
    if compiled != plan['torch']['cuda']:
        raise PlanError(f'the installed mmcv reports CUDA {compiled!r}, torch is built for '
                        f"CUDA {plan['torch']['cuda']}: the build did not compile its CUDA "
                        'operators')
    return compiled


def build_wheel(plan):
    """Build (or reuse) the wheel and check its kernels; returns (wheel path, kernel table)."""
    wheel_dir = plan['wheel_dir']
    existing = sorted(f for f in os.listdir(wheel_dir) if f.endswith('.whl')) \
        if osp.isdir(wheel_dir) else []
    if existing:
        log(f'reusing the wheel built before: {wheel_dir}/{existing[-1]}')
        wheel = osp.join(wheel_dir, existing[-1])
        return wheel, verify(plan, wheel)[0]
    shutil.rmtree(wheel_dir, ignore_errors=True)
    env = dict(os.environ)
    env.update(plan['build_env'])
    env['PATH'] = osp.join(plan['toolkit']['cuda_home'], 'bin') + os.pathsep + env['PATH']
    os.makedirs(osp.dirname(wheel_dir), exist_ok=True)
    tmp_out = wheel_dir + '.partial'
    shutil.rmtree(tmp_out, ignore_errors=True)
    log_path = wheel_dir + '.log'
    with tempfile.TemporaryDirectory() as work:
        src = fetch_source(plan, work)
        cmd = pip_cmd() + ['wheel', '-v', '--no-deps', '--no-build-isolation', '--no-cache-dir',
                           src, '-w', tmp_out]
        log(f'building mmcv {plan["mmcv"]} for {plan["arch_list"]} with '
            f'MAX_JOBS={plan["build_env"]["MAX_JOBS"]} (about 32 minutes on 2 cores for two '
            f'architectures); full log: {log_path}')
        log('$ ' + ' '.join(f'{k}={v}' for k, v in plan['build_env'].items()) + ' '
            + ' '.join(shlex.quote(c) for c in cmd))
        start = time.time()
        last = 0
        with open(log_path, 'w') as logf:
            proc = subprocess.Popen(cmd, env=env, stdout=subprocess.PIPE,
                                    stderr=subprocess.STDOUT, text=True)
            for line in proc.stdout:
                logf.write(line)
                m = re.match(r'\s*\[(\d+)/(\d+)\]', line)  # pip -v indents
                if m and (int(m.group(1)) - last >= 10 or m.group(1) == m.group(2)):
                    last = int(m.group(1))
                    log(f'compiled {m.group(1)}/{m.group(2)} '
                        f'({(time.time() - start) / 60:.1f} min)')
            rc = proc.wait()
        seconds = time.time() - start
        if rc != 0:
            tail = open(log_path).read()[-3000:]
            hint = ''
            if "need 'typename'" in tail:
                hint = ('\nthis is the torch-header error under C++17: rerun with '
                        'MMCV_CXX_STD=c++20 (GCC >= 11)')
            elif 'nv/target' in tail:
                hint = ('\nnvcc found no CCCL headers: the toolkit at CUDA_HOME lacks '
                        'include/cccl (nvidia-cuda-cccl)')
            raise PlanError(f'mmcv build failed after {seconds / 60:.1f} min (log: {log_path}):'
                            f'\n{tail}{hint}')
    wheels = [f for f in os.listdir(tmp_out) if f.endswith('.whl')]
    if len(wheels) != 1:
        raise PlanError(f'the build wrote {wheels} to {tmp_out}, expected one mmcv wheel')
    table, found = verify(plan, osp.join(tmp_out, wheels[0]))
    write_record(plan, osp.join(tmp_out, wheels[0]), seconds, table, found,
                 osp.join(tmp_out, 'build.json'))
    shutil.rmtree(wheel_dir, ignore_errors=True)
    os.replace(tmp_out, wheel_dir)
    return osp.join(wheel_dir, wheels[0]), table


def build(plan, record=None):
    tk = plan['toolkit']
    if tk['source'] == 'pip wheels':
        run(pip_cmd() + ['install', '-q'] + tk['packages'])
        lay_out_cuda_home(tk['wheel_prefix'], tk['cuda_home'],
                          version_tuple(plan['torch']['cuda'])[0])
        found = nvcc_version(tk['cuda_home'])
        if found is None or version_tuple(found) != version_tuple(tk['version']):
            raise PlanError(f"nvcc in {tk['cuda_home']} reports {found}, expected CUDA "
                            f"{tk['version']}")
        log(f"CUDA_HOME={tk['cuda_home']}: nvcc {found}")
    wheel, table = build_wheel(plan)
    log(f"{osp.basename(wheel)}: device code for {', '.join(table)}; "
        f"{sum(len(v) for v in table.values())} kernels")
    run(pip_cmd() + ['install', '-q', '--no-deps', '--force-reinstall', wheel])
    compiled = check_installed(plan)
    log(f'installed: mmcv {plan["mmcv"]} with CUDA {compiled} operators; nms and roi_align '
        'run on CPU tensors')
    if record:  # the record written when this wheel was built
        os.makedirs(osp.dirname(osp.abspath(record)), exist_ok=True)
        shutil.copyfile(osp.join(osp.dirname(wheel), 'build.json'), record)
        log(f'record: {record}')
    return wheel


def write_record(plan, wheel, seconds, table, found, path):
    import torch
    rec = {
        'what': 'mmcv built with its CUDA operators (tools/build_mmcv_cuda.py build, run by '
                'FORCE_CUDA=1 bash tools/setup_env.sh)',
        'date': time.strftime('%Y-%m-%d'), 'gpu_visible': bool(visible_gpu_archs()),
        'cpu': platform.processor() or platform.machine(),
        'cpu_model': _cpu_model(), 'cores': os.cpu_count(),
        'python': platform.python_version(), 'torch': torch.__version__,
        'torch_cuda': torch.version.cuda, 'mmcv': plan['mmcv'],
        'toolkit': {k: v for k, v in plan['toolkit'].items() if k != 'cuda_home'},
        'compiler': plan['compiler']['version'], 'patch': plan['patch'],
        'build_env': {k: v for k, v in plan['build_env'].items() if k != 'CUDA_HOME'},
        'arch_list': plan['arch_list'],
        'build_seconds': round(seconds, 1),
        'wheel': osp.basename(wheel), 'wheel_mb': round(osp.getsize(wheel) / 2**20, 1),
        'kernels_per_arch': {a: len(v) for a, v in table.items()},
        'mask_rcnn_kernels': found,
        'kernels': kernel_identifiers(table),
    }
    os.makedirs(osp.dirname(osp.abspath(path)), exist_ok=True)
    with open(path, 'w') as f:
        json.dump(rec, f, indent=1)
        f.write('\n')


def _cpu_model():
    """vmamba_mm/benchmark.py's cpu_name, loaded by path (vmamba_mm itself is installed after
    mmcv, and importing it needs mmcv)."""
    import importlib.util
    spec = importlib.util.spec_from_file_location(
        '_vmamba_mm_benchmark', osp.join(ROOT, 'vmamba_mm', 'benchmark.py'))
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    return mod.cpu_name()


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.split('\n\n')[0])
    sub = ap.add_subparsers(dest='cmd', required=True)
    p = sub.add_parser('plan', help='print every step and flag; change nothing')
    p.add_argument('--json', action='store_true', help='the plan as JSON')
    b = sub.add_parser('build', help='build (or reuse), verify and install mmcv with CUDA ops')
    b.add_argument('--record', help="copy the build's JSON record (versions, flags, time, "
                   'kernels; kept beside the wheel as build.json) here')
    v = sub.add_parser('verify', help="list a wheel's or _ext .so's kernels per architecture")
    v.add_argument('path')
    args = ap.parse_args(argv)
    try:
        plan = make_plan(assume_torch=args.cmd == 'plan')
        if args.cmd == 'plan':
            if args.json:
                print(json.dumps(plan, indent=1))
            else:
                print_plan(plan)
        elif args.cmd == 'build':
            print_plan(plan)
            build(plan, args.record)
        else:
            table, found = verify(plan, args.path)
            for arch, names in table.items():
                log(f'{arch}: {len(names)} kernels')
            for arch, kernels in found.items():
                log(f"{arch}: {', '.join(sorted(kernels))} present")
    except PlanError as e:
        print(f'[mmcv-cuda] error: {e}', file=sys.stderr)
        return 2
    except subprocess.CalledProcessError as e:
        print(f'[mmcv-cuda] error: command failed ({e.returncode}): {e.cmd}', file=sys.stderr)
        return 2
    return 0


if __name__ == '__main__':
    sys.exit(main())
