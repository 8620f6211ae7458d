"""Operators of vmamba_mm: importable with only torch (and optionally triton)."""
from .cross_scan import cross_merge, cross_scan
from .selective_scan import selective_scan

__all__ = ['selective_scan', 'cross_scan', 'cross_merge']
