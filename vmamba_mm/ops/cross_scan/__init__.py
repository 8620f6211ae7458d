"""VMamba cross-scan (4 directions) and cross-merge, one public function each.

Registered operators in ``op.py``; backends: ``naive.py`` ('reference'),
``functions.py`` ('torch'), ``kernels.py`` ('triton').
"""
from .naive import cross_merge_naive, cross_scan_naive
from .op import cross_merge, cross_scan

__all__ = ['cross_scan', 'cross_merge', 'cross_scan_naive', 'cross_merge_naive']
