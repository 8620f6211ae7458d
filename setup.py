"""Packaging of vmamba_mm. Every version requirement comes from a requirements file.

* ``install_requires``: ``requirements-runtime.txt`` (what ``vmamba_mm`` itself
  needs: torch, with its true lower bound, and ninja, which builds the C++ CPU scan).
* extra ``mm``: ``requirements.txt``, the tested OpenMMLab stack with its pins
  (``pip install -e .[mm]``; mmcv 2.1.0 has no wheels: ``tools/setup_env.sh``
  installs the stack in the order that builds it).
"""
import os.path as osp
import re

from setuptools import find_packages, setup

HERE = osp.dirname(osp.abspath(__file__))


def read(name):
    with open(osp.join(HERE, name), encoding='utf-8') as f:
        return f.read()


def parse_requirements(name):
    """Requirement strings of a requirements file, following ``-r`` includes.

    Args:
        name (str): file name relative to the repository root.

    Returns:
        list[str]: one requirement per entry, comments and blank lines dropped.
    """
    reqs = []
    for line in read(name).splitlines():
        line = line.split('#', 1)[0].strip()
        if not line:
            continue
        if line.startswith(('-r ', '--requirement ')):
            reqs += [r for r in parse_requirements(line.split(None, 1)[1]) if r not in reqs]
        elif line.startswith('-'):
            raise ValueError(f'{name}: unsupported pip option in a requirements file: {line!r}')
        else:
            reqs.append(line)
    return reqs


def version():
    match = re.search(r"^__version__ = '([^']+)'", read('vmamba_mm/__init__.py'), re.M)
    if match is None:
        raise RuntimeError('vmamba_mm/__init__.py: no __version__ line')
    return match.group(1)


setup(
    name='vmamba_mm',
    version=version(),
    description='VMamba and Vim visual state-space backbones for OpenMMLab '
    '(mmdet, mmseg, mmpretrain) on one Triton / PyTorch selective scan',
    long_description=read('README.md'),
    long_description_content_type='text/markdown',
    packages=find_packages(include=['vmamba_mm', 'vmamba_mm.*']),
    # the C++ CPU selective scan, compiled on the user's machine on first use
    package_data={'vmamba_mm.ops.selective_scan': ['csrc/*.cpp']},
    python_requires='>=3.9',
    install_requires=parse_requirements('requirements-runtime.txt'),
    extras_require={
        'mm': parse_requirements('requirements.txt'),
        # ONNX export (tools/deployment/pytorch2onnx.py) and its onnxruntime check
        'deploy': parse_requirements('requirements-deploy.txt'),
    },
    license='Apache-2.0',
    license_files=['LICENSE'],
)
