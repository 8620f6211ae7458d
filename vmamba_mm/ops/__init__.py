"""Operators of vmamba_mm: importable with only torch (and optionally triton).

Each is a registered PyTorch operator (``torch.ops.vmamba_mm.*``) behind one
public function; backends are chosen through :mod:`vmamba_mm.ops.backend`.
"""
import torch

if not hasattr(torch.library, 'custom_op'):
    raise ImportError(
        f'vmamba_mm needs torch >= 2.4 and this is torch {torch.__version__}: its operators '
        'are registered with torch.library.custom_op (torch 2.4), which compile and ONNX '
        'export go through. Install the pinned stack (bash tools/setup_env.sh; with a GPU: '
        'FORCE_CUDA=1 bash tools/setup_env.sh, which builds mmcv 2.1.0 for it); what fails on '
        'torch 2.1-2.3 is listed in docs/installation.md#torch-21-23')

from .backend import Backend, backends, register_backend  # noqa: E402
from .cross_scan import cross_merge, cross_scan  # noqa: E402
from .selective_scan import selective_scan, selective_scan_flops  # noqa: E402

__all__ = ['selective_scan', 'selective_scan_flops', 'cross_scan', 'cross_merge', 'Backend',
           'backends', 'register_backend']
