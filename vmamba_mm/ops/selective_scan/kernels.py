"""Triton selective scan: forward and backward kernels, fp16/bf16/fp32 inputs.

One program per (batch, block of BLOCK_D channels); channels of a block share
one B/C group. The program walks the sequence in chunks of BLOCK_L steps, with
coalesced loads along L. Inside a chunk the recurrence
``h_t = a_t h_{t-1} + x_t`` (``a = exp(delta A)``, ``x = delta u B``) is a
parallel ``tl.associative_scan`` over (BLOCK_D, N, BLOCK_L) tiles with the
first-order operator ``(a1, b1) o (a2, b2) = (a1 a2, a2 b1 + b2)``; the state
(BLOCK_D, N) is carried in registers between chunks, in float32.

The forward pass stores only the state entering each chunk,
(batch, dim, n_chunks, N) float32. The backward pass walks the chunks in
reverse: it recomputes the chunk's states from that boundary state, runs the
adjoint recurrence ``g_t = dh_t + a_{t+1} g_{t+1}`` as a reverse associative
scan, and carries ``a g`` of the chunk's first step into the previous chunk.
``a_t h_{t-1}`` is taken as ``h_t - x_t``, so no division by decays. Gradients
of B and C are reduced over the block's channels and written per block (summed
over the blocks of a group afterwards, deterministic); those of A, D and
delta_bias are accumulated over L in registers and summed over the batch after.

Runs on CUDA tensors, or on CPU tensors under ``TRITON_INTERPRET=1`` (tests).
"""
import torch
import triton
import triton.language as tl

from ..backend import check_triton_device, triton_interpreted


@triton.jit
def _first_order(a1, b1, a2, b2):
    return a1 * a2, a2 * b1 + b2


@triton.jit
def _delta(delta_ptr, bias, offs, mask, HAS_BIAS: tl.constexpr, SOFTPLUS: tl.constexpr):
    """delta (+ bias) (softplus), 0 where masked: masked steps have a = 1, x = 0."""
    raw = tl.load(delta_ptr + offs, mask=mask, other=0.0).to(tl.float32)
    if HAS_BIAS:
        raw = raw + bias[:, None]
    dt = raw
    if SOFTPLUS:
        dt = tl.where(raw <= 20.0, tl.log(1.0 + tl.exp(raw)), raw)
    return tl.where(mask, dt, 0.0), raw


@triton.jit
def _block_setup(pid_b, pid_d, A_ptr, bias_ptr, D_ptr, dim, L, G, dg, n_chunks,
                 N: tl.constexpr, NP: tl.constexpr, BLOCK_D: tl.constexpr,
                 HAS_BIAS: tl.constexpr, HAS_D: tl.constexpr):
    """What both kernels need for their (batch, channel block): channel and state
    offsets, A (BLOCK_D, NP), dt bias and D (zeros when absent), and the row starts
    of the block's u/delta sequences, of its B/C group's sequences and of its
    boundary states (batch, dim, n_chunks, N)."""
    offs_d = pid_d * BLOCK_D + tl.arange(0, BLOCK_D)
    offs_n = tl.arange(0, NP)
    mask_n = offs_n < N
    group = (pid_d * BLOCK_D) // dg
    A = tl.load(A_ptr + offs_d[:, None] * N + offs_n[None, :], mask=mask_n[None, :], other=0.0)
    bias = tl.zeros([BLOCK_D], dtype=tl.float32)
    if HAS_BIAS:
        bias = tl.load(bias_ptr + offs_d)
    Dv = tl.zeros([BLOCK_D], dtype=tl.float32)
    if HAS_D:
        Dv = tl.load(D_ptr + offs_d)
    row = (pid_b * dim + offs_d) * L  # (BLOCK_D,) start of each channel's sequence
    bc_row = ((pid_b * G + group) * N + offs_n) * L  # (NP,)
    state_off = ((pid_b * dim + offs_d[:, None]) * n_chunks) * N + offs_n[None, :]
    return offs_d, offs_n, mask_n, A, bias, Dv, row, bc_row, state_off


@triton.jit
def _fwd_kernel(u_ptr, delta_ptr, A_ptr, B_ptr, C_ptr, D_ptr, z_ptr, bias_ptr,
                out_ptr, states_ptr, last_ptr,
                dim, L, G, dg, n_chunks,
                N: tl.constexpr, NP: tl.constexpr, BLOCK_D: tl.constexpr, BLOCK_L: tl.constexpr,
                HAS_D: tl.constexpr, HAS_Z: tl.constexpr, HAS_BIAS: tl.constexpr,
                SOFTPLUS: tl.constexpr):
    pid_b = tl.program_id(0)
    pid_d = tl.program_id(1)
    arange_l = tl.arange(0, BLOCK_L)
    offs_d, offs_n, mask_n, A, bias, Dv, row, bc_row, state_off = _block_setup(
        pid_b, pid_d, A_ptr, bias_ptr, D_ptr, dim, L, G, dg, n_chunks,
        N, NP, BLOCK_D, HAS_BIAS, HAS_D)
    h = tl.zeros([BLOCK_D, NP], dtype=tl.float32)
    for k in range(0, n_chunks):
        tl.store(states_ptr + state_off + k * N, h, mask=mask_n[None, :])
        offs_l = k * BLOCK_L + arange_l
        mask_l = offs_l < L
        offs = row[:, None] + offs_l[None, :]
        mask = mask_l[None, :] & (offs_d[:, None] < dim)
        u = tl.load(u_ptr + offs, mask=mask, other=0.0).to(tl.float32)
        dt, raw = _delta(delta_ptr, bias, offs, mask, HAS_BIAS, SOFTPLUS)
        bc_mask = mask_n[:, None] & mask_l[None, :]
        bc_offs = bc_row[:, None] + offs_l[None, :]
        Bt = tl.load(B_ptr + bc_offs, mask=bc_mask, other=0.0).to(tl.float32)
        Ct = tl.load(C_ptr + bc_offs, mask=bc_mask, other=0.0).to(tl.float32)
        a = tl.exp(dt[:, None, :] * A[:, :, None])
        x = (dt * u)[:, None, :] * Bt[None, :, :]
        a_cum, x_cum = tl.associative_scan((a, x), 2, _first_order)
        hs = a_cum * h[:, :, None] + x_cum
        y = tl.sum(hs * Ct[None, :, :], axis=1)
        h = tl.sum(tl.where((arange_l == BLOCK_L - 1)[None, None, :], hs, 0.0), axis=2)
        if HAS_D:
            y += Dv[:, None] * u
        if HAS_Z:
            z = tl.load(z_ptr + offs, mask=mask, other=0.0).to(tl.float32)
            y = y * z * tl.sigmoid(z)
        tl.store(out_ptr + offs, y.to(out_ptr.dtype.element_ty), mask=mask)
    tl.store(last_ptr + (pid_b * dim + offs_d[:, None]) * N + offs_n[None, :], h,
             mask=mask_n[None, :])


@triton.jit
def _bwd_kernel(u_ptr, delta_ptr, A_ptr, B_ptr, C_ptr, D_ptr, z_ptr, bias_ptr,
                dout_ptr, states_ptr, dlast_ptr,
                du_ptr, ddelta_ptr, dz_ptr, dA_ptr, dB_ptr, dC_ptr, dD_ptr, dbias_ptr,
                dim, L, G, dg, n_chunks, n_blocks,
                N: tl.constexpr, NP: tl.constexpr, BLOCK_D: tl.constexpr, BLOCK_L: tl.constexpr,
                HAS_D: tl.constexpr, HAS_Z: tl.constexpr, HAS_BIAS: tl.constexpr,
                SOFTPLUS: tl.constexpr, HAS_DLAST: tl.constexpr):
    pid_b = tl.program_id(0)
    pid_d = tl.program_id(1)
    arange_l = tl.arange(0, BLOCK_L)
    offs_d, offs_n, mask_n, A, bias, Dv, row, bc_row, state_off = _block_setup(
        pid_b, pid_d, A_ptr, bias_ptr, D_ptr, dim, L, G, dg, n_chunks,
        N, NP, BLOCK_D, HAS_BIAS, HAS_D)
    # (BLOCK_D, NP) offsets into (batch, dim, N) tensors.
    dn_off = (pid_b * dim + offs_d[:, None]) * N + offs_n[None, :]
    part_row = ((pid_b * n_blocks + pid_d) * N + offs_n) * L  # rows of dB/dC partials
    # Adjoint flowing into the end of the current chunk from the steps after it.
    carry = tl.zeros([BLOCK_D, NP], dtype=tl.float32)
    if HAS_DLAST:
        carry = tl.load(dlast_ptr + dn_off, mask=mask_n[None, :], other=0.0).to(tl.float32)
    dA_acc = tl.zeros([BLOCK_D, NP], dtype=tl.float32)
    dD_acc = tl.zeros([BLOCK_D], dtype=tl.float32)
    dbias_acc = tl.zeros([BLOCK_D], dtype=tl.float32)
    for kk in range(0, n_chunks):
        k = n_chunks - 1 - kk
        offs_l = k * BLOCK_L + arange_l
        mask_l = offs_l < L
        offs = row[:, None] + offs_l[None, :]
        mask = mask_l[None, :] & (offs_d[:, None] < dim)
        u = tl.load(u_ptr + offs, mask=mask, other=0.0).to(tl.float32)
        dt, raw = _delta(delta_ptr, bias, offs, mask, HAS_BIAS, SOFTPLUS)
        # delta of the next step inside the chunk (1 - decay at the chunk end).
        mask_next = mask & (arange_l < BLOCK_L - 1)[None, :] & ((offs_l + 1) < L)[None, :]
        dt_next, _ = _delta(delta_ptr, bias, offs + 1, mask_next, HAS_BIAS, SOFTPLUS)
        bc_mask = mask_n[:, None] & mask_l[None, :]
        bc_offs = bc_row[:, None] + offs_l[None, :]
        Bt = tl.load(B_ptr + bc_offs, mask=bc_mask, other=0.0).to(tl.float32)
        Ct = tl.load(C_ptr + bc_offs, mask=bc_mask, other=0.0).to(tl.float32)
        # Recompute the chunk's states from the stored boundary state.
        h0 = tl.load(states_ptr + state_off + k * N, mask=mask_n[None, :], other=0.0)
        a = tl.exp(dt[:, None, :] * A[:, :, None])
        dtu = dt * u
        x = dtu[:, None, :] * Bt[None, :, :]
        a_cum, x_cum = tl.associative_scan((a, x), 2, _first_order)
        hs = a_cum * h0[:, :, None] + x_cum
        dy = tl.load(dout_ptr + offs, mask=mask, other=0.0).to(tl.float32)
        if HAS_Z:
            y = tl.sum(hs * Ct[None, :, :], axis=1)
            if HAS_D:
                y += Dv[:, None] * u
            z = tl.load(z_ptr + offs, mask=mask, other=0.0).to(tl.float32)
            sig = tl.sigmoid(z)
            dz = dy * y * sig * (1.0 + z * (1.0 - sig))
            tl.store(dz_ptr + offs, dz.to(dz_ptr.dtype.element_ty), mask=mask)
            dy = dy * z * sig
        dD_acc += tl.sum(dy * u, axis=1)
        tl.store(dC_ptr + part_row[:, None] + offs_l[None, :],
                 tl.sum(dy[:, None, :] * hs, axis=0), mask=bc_mask)
        # Adjoint states: g_t = dy_t C_t + a_{t+1} g_{t+1}, reverse scan, plus the carry.
        a_next = tl.exp(dt_next[:, None, :] * A[:, :, None])
        dh = dy[:, None, :] * Ct[None, :, :]
        g_cum, g_loc = tl.associative_scan((a_next, dh), 2, _first_order, reverse=True)
        g = g_loc + g_cum * carry[:, :, None]
        carry = tl.sum(tl.where((arange_l == 0)[None, None, :], a * g, 0.0), axis=2)
        ddA = g * (hs - x)  # dL/d(delta A) = g_t a_t h_{t-1}
        dA_acc += tl.sum(ddA * dt[:, None, :], axis=2)
        gB = tl.sum(g * Bt[None, :, :], axis=1)
        tl.store(dB_ptr + part_row[:, None] + offs_l[None, :],
                 tl.sum(g * dtu[:, None, :], axis=0), mask=bc_mask)
        ddt = tl.sum(ddA * A[:, :, None], axis=1) + gB * u
        du = gB * dt + Dv[:, None] * dy
        tl.store(du_ptr + offs, du.to(du_ptr.dtype.element_ty), mask=mask)
        if SOFTPLUS:
            ddt = ddt * tl.sigmoid(raw)
        ddt = tl.where(mask, ddt, 0.0)
        dbias_acc += tl.sum(ddt, axis=1)
        tl.store(ddelta_ptr + offs, ddt.to(ddelta_ptr.dtype.element_ty), mask=mask)
    tl.store(dA_ptr + dn_off, dA_acc, mask=mask_n[None, :])
    tl.store(dD_ptr + pid_b * dim + offs_d, dD_acc)
    tl.store(dbias_ptr + pid_b * dim + offs_d, dbias_acc)


def _blocks(dim, G, N, backward):
    """(BLOCK_D, BLOCK_L, NP): tiles of (BLOCK_D, NP, BLOCK_L) elements.

    BLOCK_D is a power of two dividing dim // G, so a block's channels share one
    B/C group. BLOCK_L depends only on N (forward and backward chunk alike). The
    tile sizes keep both kernels free of register spills on sm_90 (checked with
    ptxas: N = 1: 124 / 128 registers forward / backward; N = 16 with z: 96 / 128);
    they are not tuned by GPU timings yet.
    """
    NP = triton.next_power_of_2(N)
    if triton_interpreted():  # the interpreter pays per element: small chunks, other blocks than GPU
        BLOCK_L, cap = 16, (4 if backward else 8)
    else:
        BLOCK_L = 64 if NP <= 4 else 32
        tile = (1024 if NP == 1 else 2048) // (2 if backward else 1)
        cap = max(1, tile // (NP * BLOCK_L))
    dg = dim // G
    BLOCK_D = 1
    while BLOCK_D * 2 <= cap and dg % (BLOCK_D * 2) == 0:
        BLOCK_D *= 2
    return BLOCK_D, BLOCK_L, NP


class _SelectiveScanTriton(torch.autograd.Function):

    @staticmethod
    def forward(ctx, u, delta, A, B, C, D, z, delta_bias, delta_softplus, return_last_state):
        batch, dim, L = u.shape
        G, N = B.shape[1], B.shape[2]
        BLOCK_D, BLOCK_L, NP = _blocks(dim, G, N, backward=False)
        n_chunks = triton.cdiv(L, BLOCK_L)
        u, delta, B, C = (t.contiguous() for t in (u, delta, B, C))
        z = z.contiguous() if z is not None else None
        A32 = A.float().contiguous()
        D32 = D.float().contiguous() if D is not None else None
        bias32 = delta_bias.float().contiguous() if delta_bias is not None else None
        out = torch.empty_like(u)
        states = u.new_empty(batch, dim, n_chunks, N, dtype=torch.float32)
        last = u.new_empty(batch, dim, N, dtype=torch.float32)
        grid = (batch, dim // BLOCK_D)
        _fwd_kernel[grid](u, delta, A32, B, C, D32, z, bias32, out, states, last,
                          dim, L, G, dim // G, n_chunks,
                          N=N, NP=NP, BLOCK_D=BLOCK_D, BLOCK_L=BLOCK_L,
                          HAS_D=D is not None, HAS_Z=z is not None,
                          HAS_BIAS=delta_bias is not None, SOFTPLUS=bool(delta_softplus))
        ctx.save_for_backward(u, delta, A32, B, C, D32, z, bias32, states)
        ctx.meta = (delta_softplus, n_chunks,
                    A.dtype, D.dtype if D is not None else None,
                    delta_bias.dtype if delta_bias is not None else None)
        if return_last_state:
            return out, last
        return out

    @staticmethod
    def backward(ctx, dout, dlast=None):
        u, delta, A32, B, C, D32, z, bias32, states = ctx.saved_tensors
        softplus, n_chunks, A_dtype, D_dtype, bias_dtype = ctx.meta
        batch, dim, L = u.shape
        G, N = B.shape[1], B.shape[2]
        # The backward keeps about twice as many tiles live: half-size tiles.
        BLOCK_D, BLOCK_L, NP = _blocks(dim, G, N, backward=True)
        n_blocks = dim // BLOCK_D
        dout = dout.contiguous() if dout is not None else torch.zeros_like(u)
        f32 = dict(dtype=torch.float32)
        du = torch.empty_like(u)
        ddelta = torch.empty_like(delta)
        dz = torch.empty_like(z) if z is not None else None
        dA = u.new_empty(batch, dim, N, **f32)
        dB = u.new_empty(batch, n_blocks, N, L, **f32)
        dC = u.new_empty(batch, n_blocks, N, L, **f32)
        dD = u.new_empty(batch, dim, **f32)
        dbias = u.new_empty(batch, dim, **f32)
        dlast = dlast.float().contiguous() if dlast is not None else None
        _bwd_kernel[(batch, n_blocks)](
            u, delta, A32, B, C, D32, z, bias32, dout, states, dlast,
            du, ddelta, dz, dA, dB, dC, dD, dbias,
            dim, L, G, dim // G, n_chunks, n_blocks,
            N=N, NP=NP, BLOCK_D=BLOCK_D, BLOCK_L=BLOCK_L,
            HAS_D=D32 is not None, HAS_Z=z is not None, HAS_BIAS=bias32 is not None,
            SOFTPLUS=bool(softplus), HAS_DLAST=dlast is not None)
        per_group = n_blocks // G
        dB = dB.view(batch, G, per_group, N, L).sum(2).to(B.dtype)
        dC = dC.view(batch, G, per_group, N, L).sum(2).to(C.dtype)
        dA = dA.sum(0).to(A_dtype)
        dD = dD.sum(0).to(D_dtype) if D32 is not None else None
        dbias = dbias.sum(0).to(bias_dtype) if bias32 is not None else None
        return du, ddelta, dA, dB, dC, dD, dz, dbias, None, None


def selective_scan_triton(u, delta, A, B, C, D=None, z=None, delta_bias=None,
                          delta_softplus=False, return_last_state=False):
    """Triton selective scan (arguments already validated; B, C as (batch, G, N, L)).

    Raises:
        TypeError: for inputs other than fp16/bf16/fp32.
        RuntimeError: for CPU tensors without ``TRITON_INTERPRET=1``.
    """
    allowed = (torch.float16, torch.bfloat16, torch.float32)
    for name, t in dict(u=u, delta=delta, A=A, B=B, C=C, D=D, z=z, delta_bias=delta_bias).items():
        if t is not None and t.dtype not in allowed:
            raise TypeError(f'selective_scan: backend triton supports fp16/bf16/fp32 inputs, '
                            f'{name} is {t.dtype} (use backend="torch" or cast explicitly)')
    check_triton_device('selective_scan', u)
    return _SelectiveScanTriton.apply(u, delta, A, B, C, D, z, delta_bias,
                                      bool(delta_softplus), bool(return_last_state))
