"""Cross-scan and cross-merge as standard tensor operations, for export.

Both layouts of the registered operators ``vmamba_mm::cross_scan`` /
``vmamba_mm::cross_merge``, written with reshapes, transposes, flips (ONNX
Slice with step -1), stacks and additions only: no in-place writes, no size
arithmetic beyond ``H * W``, so ``torch.export`` traces them for symbolic
H and W.
"""
import torch


def cross_scan_decomposed(x, time_major=False):
    """The four scan orders of a map (row-major, column-major, both reversed).

    Args:
        x (Tensor): (B, C, H, W), or (B, H, W, C) if ``time_major``.
        time_major (bool): the layout.

    Returns:
        Tensor: (B, 4, C, H * W), or (B, H * W, 4, C) if ``time_major``.
    """
    if time_major:
        B, H, W, C = x.shape
        row = x.reshape(B, H * W, C)
        col = x.transpose(1, 2).reshape(B, H * W, C)
        return torch.stack([row, col, row.flip(1), col.flip(1)], dim=2)
    B, C, H, W = x.shape
    row = x.reshape(B, C, H * W)
    col = x.transpose(2, 3).reshape(B, C, H * W)
    return torch.stack([row, col, row.flip(2), col.flip(2)], dim=1)


def cross_merge_decomposed(ys, time_major=False):
    """Fold the four scan orders back onto the map and sum them (the adjoint).

    Args:
        ys (Tensor): (B, 4, C, H, W), or (B, H, W, 4, C) if ``time_major``:
            each direction's sequence, in its scan order, viewed as (H, W).
        time_major (bool): the layout.

    Returns:
        Tensor: (B, C, H, W), or (B, H, W, C) if ``time_major``; contiguous.
    """
    if time_major:
        B, H, W, K, C = ys.shape
        seq = ys.reshape(B, H * W, K, C)
        row = seq[:, :, 0] + seq[:, :, 2].flip(1)
        col = seq[:, :, 1] + seq[:, :, 3].flip(1)
        return (row.reshape(B, H, W, C) + col.reshape(B, W, H, C).transpose(1, 2)).contiguous()
    B, K, C, H, W = ys.shape
    seq = ys.reshape(B, K, C, H * W)
    row = seq[:, 0] + seq[:, 2].flip(2)
    col = seq[:, 1] + seq[:, 3].flip(2)
    return (row.reshape(B, C, H, W) + col.reshape(B, C, W, H).transpose(2, 3)).contiguous()
