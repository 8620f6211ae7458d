"""VMamba cross-scan (4 directions) and cross-merge."""
from .naive import cross_merge_naive, cross_scan_naive


def cross_scan(x, backend=None):
    """(B, C, H, W) -> (B, 4, C, H*W) in the orders row, column, row reversed, column reversed."""
    return cross_scan_naive(x)


def cross_merge(ys, backend=None):
    """(B, 4, C, H, W) -> (B, C, H, W): the inverse of each order, summed."""
    return cross_merge_naive(ys)


__all__ = ['cross_scan', 'cross_merge']
