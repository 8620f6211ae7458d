"""CrossScan / CrossMerge autograd Functions: the 'torch' backend.

Cross-merge is the adjoint (transpose) of cross-scan: each direction is a
permutation of the H * W positions, so the gradient of a scan is the merge of
the gradient and vice versa. Each Function's backward calls the other one,
which also makes double backward work.
"""
import torch


def _scan(x):
    B, C, H, W = x.shape
    L = H * W
    out = x.new_empty(B, 4, C, L)
    out[:, 0] = x.reshape(B, C, L)
    out[:, 1].view(B, C, W, H).copy_(x.transpose(2, 3))
    out[:, 2:] = out[:, :2].flip(-1)
    return out


def _merge(ys):
    B, K, C, H, W = ys.shape
    seq = ys.reshape(B, K, C, H * W)
    both = seq[:, :2] + seq[:, 2:].flip(-1)  # (B, 2, C, L): row-major and column-major
    return both[:, 0].view(B, C, H, W) + both[:, 1].view(B, C, W, H).transpose(2, 3)


def adjoint_pair(scan_fn, merge_fn, name):
    """Autograd Functions for a cross-scan / cross-merge implementation pair.

    ``scan_fn``: (B, C, H, W) -> (B, 4, C, H * W); ``merge_fn``: (B, 4, C, H, W)
    -> (B, C, H, W). Each is the other's adjoint, so each Function's backward is
    the other Function (which also makes double backward work).
    """

    class Scan(torch.autograd.Function):

        @staticmethod
        def forward(ctx, x):
            ctx.hw = x.shape[2:]
            return scan_fn(x)

        @staticmethod
        def backward(ctx, grad):
            B, K, C, L = grad.shape
            return Merge.apply(grad.view(B, K, C, *ctx.hw))

    class Merge(torch.autograd.Function):

        @staticmethod
        def forward(ctx, ys):
            return merge_fn(ys)

        @staticmethod
        def backward(ctx, grad):
            B, C, H, W = grad.shape
            return Scan.apply(grad).view(B, 4, C, H, W)

    Scan.__name__, Merge.__name__ = f'CrossScan{name}', f'CrossMerge{name}'
    return Scan, Merge


CrossScan, CrossMerge = adjoint_pair(_scan, _merge, '')


def cross_scan_time_major(x):
    """Inference helper: (B, H, W, C) contiguous -> (B, H * W, 4, C) (time-major).

    ``out[:, l, k]`` is position ``l`` of scan order ``k`` (the orders of
    :func:`cross_scan`); every copy moves whole contiguous channel rows.
    """
    B, H, W, C = x.shape
    out = x.new_empty(B, H * W, 4, C)
    out[:, :, 0] = x.reshape(B, H * W, C)
    out[:, :, 1].view(B, W, H, C).copy_(x.transpose(1, 2))
    out[:, :, 2:] = out[:, :, :2].flip(1)
    return out


def cross_merge_time_major(ys, H, W):
    """Inference helper: (B, H * W, 4, C) -> (B, H, W, C) contiguous, the adjoint
    of :func:`cross_scan_time_major` (as :func:`cross_merge` is of :func:`cross_scan`)."""
    B, L, K, C = ys.shape
    both = ys[:, :, :2] + ys[:, :, 2:].flip(1)  # (B, L, 2, C): row-major and column-major
    out = torch.add(both[:, :, 0].reshape(B, H, W, C),
                    both[:, :, 1].reshape(B, W, H, C).transpose(1, 2))
    return out.contiguous()
