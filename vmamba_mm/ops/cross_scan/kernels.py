"""Triton cross-scan / cross-merge, both layouts, any input strides.

One program per (batch and block of BLOCK_C channels, H tile, W tile): a
(BLOCK_C, BLOCK_H, BLOCK_W) tile of the map is read once and written to /
gathered from the four scan orders: row-major ``h W + w``, column-major
``w H + h`` and both reversed (``L - 1 - index``). Channel-major maps use
BLOCK_C = 1 and wide spatial tiles (coalesced along W); time-major ones a
block of channels (coalesced along C). Merge sums in float32 (float64 for
float64 inputs). Plain functions: autograd lives with the registered operator
(each is the other's adjoint). Runs on CUDA tensors, or on CPU tensors under
``TRITON_INTERPRET=1``.
"""
import torch
import triton
import triton.language as tl

from ..backend import check_triton_device


@triton.jit
def _tile(pid_bc, pid_h, pid_w, C, H, W,
          BLOCK_C: tl.constexpr, BLOCK_H: tl.constexpr, BLOCK_W: tl.constexpr):
    """Batch index, channel offsets (BLOCK_C, 1, 1), row-major and column-major
    positions (1, BLOCK_H, BLOCK_W), and the tile's mask."""
    n_cb = tl.cdiv(C, BLOCK_C)
    b = pid_bc // n_cb
    offs_c = (pid_bc % n_cb) * BLOCK_C + tl.arange(0, BLOCK_C)
    offs_h = pid_h * BLOCK_H + tl.arange(0, BLOCK_H)
    offs_w = pid_w * BLOCK_W + tl.arange(0, BLOCK_W)
    c = offs_c[:, None, None]
    h = offs_h[None, :, None]
    w = offs_w[None, None, :]
    mask = (c < C) & (h < H) & (w < W)
    return b.to(tl.int64), c, h, w, h * W + w, w * H + h, mask


@triton.jit
def _cross_scan_kernel(x_ptr, out_ptr, C, H, W,
                       sx_b, sx_c, sx_h, sx_w, so_b, so_k, so_c, so_l,
                       BLOCK_C: tl.constexpr, BLOCK_H: tl.constexpr, BLOCK_W: tl.constexpr):
    L = H * W
    b, c, h, w, row, col, mask = _tile(tl.program_id(0), tl.program_id(1), tl.program_id(2),
                                       C, H, W, BLOCK_C, BLOCK_H, BLOCK_W)
    v = tl.load(x_ptr + b * sx_b + c * sx_c + h * sx_h + w * sx_w, mask=mask)
    base = out_ptr + b * so_b + c * so_c  # direction k at base + k * so_k
    tl.store(base + row * so_l, v, mask=mask)
    tl.store(base + so_k + col * so_l, v, mask=mask)
    tl.store(base + 2 * so_k + (L - 1 - row) * so_l, v, mask=mask)
    tl.store(base + 3 * so_k + (L - 1 - col) * so_l, v, mask=mask)


@triton.jit
def _cross_merge_kernel(ys_ptr, out_ptr, C, H, W,
                        sy_b, sy_k, sy_c, sy_l, so_b, so_c, so_h, so_w,
                        BLOCK_C: tl.constexpr, BLOCK_H: tl.constexpr, BLOCK_W: tl.constexpr,
                        ACC_F64: tl.constexpr):
    L = H * W
    b, c, h, w, row, col, mask = _tile(tl.program_id(0), tl.program_id(1), tl.program_id(2),
                                       C, H, W, BLOCK_C, BLOCK_H, BLOCK_W)
    base = ys_ptr + b * sy_b + c * sy_c
    acc_t = tl.float64 if ACC_F64 else tl.float32
    y = tl.load(base + row * sy_l, mask=mask, other=0.0).to(acc_t)
    y += tl.load(base + sy_k + col * sy_l, mask=mask, other=0.0).to(acc_t)
    y += tl.load(base + 2 * sy_k + (L - 1 - row) * sy_l, mask=mask, other=0.0).to(acc_t)
    y += tl.load(base + 3 * sy_k + (L - 1 - col) * sy_l, mask=mask, other=0.0).to(acc_t)
    tl.store(out_ptr + b * so_b + c * so_c + h * so_h + w * so_w,
             y.to(out_ptr.dtype.element_ty), mask=mask)


def tile_sizes(C, H, W, time_major):
    """(BLOCK_C, BLOCK_H, BLOCK_W): 1 x 32 x 32 spatial tiles channel-major, 64
    channels x 4 x 4 positions time-major (capped by the map's size)."""
    if time_major:
        return min(64, triton.next_power_of_2(C)), min(4, triton.next_power_of_2(H)), \
            min(4, triton.next_power_of_2(W))
    return 1, min(32, triton.next_power_of_2(H)), min(32, triton.next_power_of_2(W))


def _launch_args(src, out, C, H, W, src_strides, out_strides, time_major):
    BC, BH, BW = tile_sizes(C, H, W, time_major)
    grid = (src.shape[0] * triton.cdiv(C, BC), triton.cdiv(H, BH), triton.cdiv(W, BW))
    args = (src, out, C, H, W, *src_strides, *out_strides)
    return grid, args, dict(BLOCK_C=BC, BLOCK_H=BH, BLOCK_W=BW)


def cross_scan_launch(x, time_major):
    """The cross-scan kernel's launch for ``x``: ``(grid, args, kwargs, out)``, the
    output allocated on ``x``'s device (meta tensors: launches of real shapes
    without memory, for the ahead-of-time compile check)."""
    if time_major:
        B, H, W, C = x.shape
        out = x.new_empty(B, H * W, 4, C)
        sx = (x.stride(0), x.stride(3), x.stride(1), x.stride(2))
        so = (out.stride(0), out.stride(2), out.stride(3), out.stride(1))
    else:
        B, C, H, W = x.shape
        out = x.new_empty(B, 4, C, H * W)
        sx, so = x.stride(), out.stride()
    return (*_launch_args(x, out, C, H, W, sx, so, time_major), out)


def cross_merge_launch(ys, time_major):
    """The cross-merge kernel's launch for ``ys``: ``(grid, args, kwargs, out)``."""
    if time_major:
        B, H, W, K, C = ys.shape
        seq = ys.reshape(B, H * W, K, C)  # a view unless (H, W) cannot be merged
        sy = (seq.stride(0), seq.stride(2), seq.stride(3), seq.stride(1))
        out = ys.new_empty(B, H, W, C)
        so = (out.stride(0), out.stride(3), out.stride(1), out.stride(2))
    else:
        B, K, C, H, W = ys.shape
        seq = ys.reshape(B, K, C, H * W)
        sy = seq.stride()
        out = ys.new_empty(B, C, H, W)
        so = out.stride()
    grid, args, kw = _launch_args(seq, out, C, H, W, sy, so, time_major)
    kw['ACC_F64'] = ys.dtype == torch.float64
    return grid, args, kw, out


def cross_scan_fwd(x, time_major):
    """Four scan orders of a map, any input strides.

    Args:
        x (Tensor): (B, C, H, W), or (B, H, W, C) if ``time_major``.
        time_major (bool): the layout.

    Returns:
        Tensor: contiguous (B, 4, C, H * W), or (B, H * W, 4, C) if ``time_major``.
    """
    check_triton_device('cross_scan', x)
    grid, args, kw, out = cross_scan_launch(x, time_major)
    _cross_scan_kernel[grid](*args, **kw)
    return out


def cross_merge_fwd(ys, time_major):
    """Fold the four scan orders back onto the map and sum them (the adjoint of
    :func:`cross_scan_fwd`).

    Args:
        ys (Tensor): (B, 4, C, H, W), or (B, H, W, 4, C) if ``time_major``; each
            direction's sequence (in its scan order) viewed as (H, W).
        time_major (bool): the layout.

    Returns:
        Tensor: contiguous (B, C, H, W), or (B, H, W, C) if ``time_major``.
    """
    check_triton_device('cross_merge', ys)
    grid, args, kw, out = cross_merge_launch(ys, time_major)
    _cross_merge_kernel[grid](*args, **kw)
    return out
