"""Triton cross-scan / cross-merge: one program per (batch * channel, H tile, W tile).

A (BLOCK_H, BLOCK_W) tile of the map is read once (coalesced along W) and
written to / gathered from the four scan orders: row-major ``h W + w``,
column-major ``w H + h`` and both reversed (``L - 1 - index``). Merge sums in
float32 (float64 for float64 inputs). Backward of each is the other kernel.
Runs on CUDA tensors, or on CPU tensors under ``TRITON_INTERPRET=1``.
"""
import torch
import triton
import triton.language as tl

from ..backend import check_triton_device
from .functions import adjoint_pair


@triton.jit
def _tile(pid_h, pid_w, H, W, BLOCK_H: tl.constexpr, BLOCK_W: tl.constexpr):
    offs_h = pid_h * BLOCK_H + tl.arange(0, BLOCK_H)
    offs_w = pid_w * BLOCK_W + tl.arange(0, BLOCK_W)
    mask = (offs_h < H)[:, None] & (offs_w < W)[None, :]
    row = offs_h[:, None] * W + offs_w[None, :]
    col = offs_w[None, :] * H + offs_h[:, None]
    return row, col, mask


@triton.jit
def _cross_scan_kernel(x_ptr, out_ptr, C, H, W,
                       BLOCK_H: tl.constexpr, BLOCK_W: tl.constexpr):
    pid_bc = tl.program_id(0)
    L = H * W
    row, col, mask = _tile(tl.program_id(1), tl.program_id(2), H, W, BLOCK_H, BLOCK_W)
    v = tl.load(x_ptr + pid_bc * L + row, mask=mask)
    b = pid_bc // C
    c = pid_bc % C
    base = out_ptr + (b * 4 * C + c) * L  # direction k is at base + k * C * L
    tl.store(base + row, v, mask=mask)
    tl.store(base + C * L + col, v, mask=mask)
    tl.store(base + 2 * C * L + (L - 1 - row), v, mask=mask)
    tl.store(base + 3 * C * L + (L - 1 - col), v, mask=mask)


@triton.jit
def _cross_merge_kernel(ys_ptr, out_ptr, C, H, W,
                        BLOCK_H: tl.constexpr, BLOCK_W: tl.constexpr, ACC_F64: tl.constexpr):
    pid_bc = tl.program_id(0)
    L = H * W
    row, col, mask = _tile(tl.program_id(1), tl.program_id(2), H, W, BLOCK_H, BLOCK_W)
    b = pid_bc // C
    c = pid_bc % C
    base = ys_ptr + (b * 4 * C + c) * L
    acc_t = tl.float64 if ACC_F64 else tl.float32
    y = tl.load(base + row, mask=mask, other=0.0).to(acc_t)
    y += tl.load(base + C * L + col, mask=mask, other=0.0).to(acc_t)
    y += tl.load(base + 2 * C * L + (L - 1 - row), mask=mask, other=0.0).to(acc_t)
    y += tl.load(base + 3 * C * L + (L - 1 - col), mask=mask, other=0.0).to(acc_t)
    tl.store(out_ptr + pid_bc * L + row, y.to(out_ptr.dtype.element_ty), mask=mask)


def _grid(B, C, H, W):
    BLOCK_H = min(32, triton.next_power_of_2(H))
    BLOCK_W = min(32, triton.next_power_of_2(W))
    return (B * C, triton.cdiv(H, BLOCK_H), triton.cdiv(W, BLOCK_W)), BLOCK_H, BLOCK_W


def cross_scan_triton_fwd(x):
    check_triton_device('cross_scan', x)
    x = x.contiguous()
    B, C, H, W = x.shape
    out = x.new_empty(B, 4, C, H * W)
    grid, BH, BW = _grid(B, C, H, W)
    _cross_scan_kernel[grid](x, out, C, H, W, BLOCK_H=BH, BLOCK_W=BW)
    return out


def cross_merge_triton_fwd(ys):
    check_triton_device('cross_merge', ys)
    ys = ys.contiguous()
    B, K, C, H, W = ys.shape
    out = ys.new_empty(B, C, H, W)
    grid, BH, BW = _grid(B, C, H, W)
    _cross_merge_kernel[grid](ys, out, C, H, W, BLOCK_H=BH, BLOCK_W=BW,
                              ACC_F64=ys.dtype == torch.float64)
    return out


CrossScanTriton, CrossMergeTriton = adjoint_pair(cross_scan_triton_fwd, cross_merge_triton_fwd,
                                                 'Triton')
