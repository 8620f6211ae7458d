"""Operators of vmamba_mm: importable with only torch (and optionally triton).

Each is a registered PyTorch operator (``torch.ops.vmamba_mm.*``) behind one
public function; backends are chosen through :mod:`vmamba_mm.ops.backend`.
"""
from .backend import Backend, backends, register_backend
from .cross_scan import cross_merge, cross_scan
from .selective_scan import selective_scan, selective_scan_flops

__all__ = ['selective_scan', 'selective_scan_flops', 'cross_scan', 'cross_merge', 'Backend',
           'backends', 'register_backend']
