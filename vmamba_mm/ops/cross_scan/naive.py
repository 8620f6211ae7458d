"""Reference cross-scan / cross-merge of VMamba's 2D Selective Scan.

The four scan orders of an (H, W) map, as sequences of length L = H * W:
    0: row-major, 1: column-major, 2: row-major reversed, 3: column-major reversed.
Cross-merge maps each sequence back to its (H, W) position and sums the four.
"""
import torch


def cross_scan_naive(x):
    """(B, C, H, W) -> (B, 4, C, H * W)."""
    row = x.flatten(2)
    col = x.transpose(2, 3).flatten(2)
    return torch.stack([row, col, row.flip(-1), col.flip(-1)], dim=1)


def cross_merge_naive(ys):
    """(B, 4, C, H, W) -> (B, C, H, W): inverse permutations, summed.

    ``ys[:, k]`` holds direction k's sequence laid out as an (H, W) buffer in
    scan order (the layout that ``selective_scan`` outputs reshaped to H, W).
    """
    B, K, C, H, W = ys.shape
    seq = ys.flatten(3)  # (B, 4, C, L) in each direction's scan order
    row = seq[:, 0] + seq[:, 2].flip(-1)
    col = seq[:, 1] + seq[:, 3].flip(-1)
    return row.view(B, C, H, W) + col.view(B, C, W, H).transpose(2, 3)


# ---------------------------------------------------------------- the 'reference' backend
def cross_scan_fwd(x, time_major):
    """Backend entry: time-major (B, H, W, C) -> (B, L, 4, C) through the channel-major reference."""
    if not time_major:
        return cross_scan_naive(x).contiguous()
    return cross_scan_naive(x.permute(0, 3, 1, 2)).permute(0, 3, 1, 2).contiguous()


def cross_merge_fwd(ys, time_major):
    """Backend entry: time-major (B, H, W, 4, C) -> (B, H, W, C)."""
    if not time_major:
        return cross_merge_naive(ys).contiguous()
    return cross_merge_naive(ys.permute(0, 3, 4, 1, 2)).permute(0, 2, 3, 1).contiguous()
