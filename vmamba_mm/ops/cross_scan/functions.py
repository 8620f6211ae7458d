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


def _merge_input_shape(x_shape):
    B, C, H, W = x_shape
    return B, 4, C, H, W


def adjoint_pair(scan_fn, merge_fn, name, merge_input_shape=_merge_input_shape):
    """Autograd Functions for a cross-scan / cross-merge implementation pair.

    ``scan_fn`` unfolds a map into the four scan orders, ``merge_fn`` folds
    them back and sums them; ``merge_input_shape(x.shape)`` is the shape in
    which ``merge_fn`` takes the scan's output (channel-major defaults:
    (B, C, H, W) -> (B, 4, C, H * W) -> viewed (B, 4, C, H, W) -> (B, C, H, W)).
    Each is the other's adjoint, so each Function's backward is the other
    Function (which also makes double backward work).
    """

    class Scan(torch.autograd.Function):

        @staticmethod
        def forward(ctx, x):
            ctx.merge_shape = merge_input_shape(x.shape)
            return scan_fn(x)

        @staticmethod
        def backward(ctx, grad):
            return Merge.apply(grad.view(ctx.merge_shape))

    class Merge(torch.autograd.Function):

        @staticmethod
        def forward(ctx, ys):
            ctx.ys_shape = ys.shape
            return merge_fn(ys)

        @staticmethod
        def backward(ctx, grad):
            return Scan.apply(grad).view(ctx.ys_shape)

    Scan.__name__, Merge.__name__ = f'CrossScan{name}', f'CrossMerge{name}'
    return Scan, Merge


CrossScan, CrossMerge = adjoint_pair(_scan, _merge, '')


def _scan_time_major(x):
    """(B, H, W, C) -> (B, H * W, 4, C): ``out[:, l, k]`` is position ``l`` of scan
    order ``k`` (the orders of :func:`cross_scan`); every copy moves whole
    contiguous channel rows."""
    x = x.contiguous()
    B, H, W, C = x.shape
    out = x.new_empty(B, H * W, 4, C)
    out[:, :, 0] = x.reshape(B, H * W, C)
    out[:, :, 1].view(B, W, H, C).copy_(x.transpose(1, 2))
    out[:, :, 2:] = out[:, :, :2].flip(1)
    return out


def _merge_time_major(ys):
    """(B, H, W, 4, C) (the (B, H * W, 4, C) sequences viewed) -> (B, H, W, C)
    contiguous, the adjoint of :func:`_scan_time_major`."""
    B, H, W, K, C = ys.shape
    ys = ys.reshape(B, H * W, K, C)
    both = ys[:, :, :2] + ys[:, :, 2:].flip(1)  # (B, L, 2, C): row-major and column-major
    out = torch.add(both[:, :, 0].reshape(B, H, W, C),
                    both[:, :, 1].reshape(B, W, H, C).transpose(1, 2))
    return out.contiguous()


# The 'torch' backend's time-major pair, for VMamba's SS2D on that backend:
# channels-last maps in and out, (B, L, 4, C) sequences.
CrossScanTimeMajor, CrossMergeTimeMajor = adjoint_pair(
    _scan_time_major, _merge_time_major, 'TimeMajor',
    merge_input_shape=lambda shape: (*shape[:3], 4, shape[3]))


def cross_scan_time_major(x):
    """(B, H, W, C) -> (B, H * W, 4, C), time-major :func:`cross_scan` (autograd)."""
    return CrossScanTimeMajor.apply(x)


def cross_merge_time_major(ys, H, W):
    """(B, H * W, 4, C) -> (B, H, W, C) contiguous, time-major :func:`cross_merge`
    (its adjoint; autograd)."""
    B, L, K, C = ys.shape
    return CrossMergeTimeMajor.apply(ys.view(B, H, W, K, C))
