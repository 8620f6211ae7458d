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


class CrossScan(torch.autograd.Function):
    """(B, C, H, W) -> (B, 4, C, H * W)."""

    @staticmethod
    def forward(ctx, x):
        ctx.hw = x.shape[2:]
        return _scan(x)

    @staticmethod
    def backward(ctx, grad):
        B, K, C, L = grad.shape
        return CrossMerge.apply(grad.view(B, K, C, *ctx.hw))


class CrossMerge(torch.autograd.Function):
    """(B, 4, C, H, W) -> (B, C, H, W), the adjoint of CrossScan."""

    @staticmethod
    def forward(ctx, ys):
        return _merge(ys)

    @staticmethod
    def backward(ctx, grad):
        B, C, H, W = grad.shape
        return CrossScan.apply(grad).view(B, 4, C, H, W)
