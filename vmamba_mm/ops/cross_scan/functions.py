"""The 'torch' backend of cross-scan / cross-merge: whole-row copies, any device.

Cross-merge is the adjoint (transpose) of cross-scan: each direction is a
permutation of the H * W positions (the registered operators in ``op.py`` use
each as the other's backward).
"""
import torch


def _scan_channel_major(x):
    B, C, H, W = x.shape
    L = H * W
    out = x.new_empty(B, 4, C, L)
    out[:, 0] = x.reshape(B, C, L)
    out[:, 1].view(B, C, W, H).copy_(x.transpose(2, 3))
    out[:, 2:] = out[:, :2].flip(-1)
    return out


def _merge_channel_major(ys):
    B, K, C, H, W = ys.shape
    seq = ys.reshape(B, K, C, H * W)
    both = seq[:, :2] + seq[:, 2:].flip(-1)  # (B, 2, C, L): row-major and column-major
    return (both[:, 0].view(B, C, H, W) + both[:, 1].view(B, C, W, H).transpose(2, 3)).contiguous()


def _scan_time_major(x):
    """(B, H, W, C) -> (B, H * W, 4, C); every copy moves whole contiguous channel rows."""
    x = x.contiguous()
    B, H, W, C = x.shape
    out = x.new_empty(B, H * W, 4, C)
    out[:, :, 0] = x.reshape(B, H * W, C)
    out[:, :, 1].view(B, W, H, C).copy_(x.transpose(1, 2))
    out[:, :, 2:] = out[:, :, :2].flip(1)
    return out


def _merge_time_major(ys):
    """(B, H, W, 4, C) (the (B, H * W, 4, C) sequences viewed) -> (B, H, W, C)."""
    B, H, W, K, C = ys.shape
    ys = ys.reshape(B, H * W, K, C)
    both = ys[:, :, :2] + ys[:, :, 2:].flip(1)  # (B, L, 2, C): row-major and column-major
    out = torch.add(both[:, :, 0].reshape(B, H, W, C),
                    both[:, :, 1].reshape(B, W, H, C).transpose(1, 2))
    return out.contiguous()


def cross_scan_fwd(x, time_major):
    """Backend entry (see ``vmamba_mm/ops/cross_scan/op.py``)."""
    return _scan_time_major(x) if time_major else _scan_channel_major(x)


def cross_merge_fwd(ys, time_major):
    """Backend entry (see ``vmamba_mm/ops/cross_scan/op.py``)."""
    return _merge_time_major(ys) if time_major else _merge_channel_major(ys)
