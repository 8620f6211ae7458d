"""Triton selective scan: forward and backward kernels, fp16/bf16/fp32 inputs.

Plain functions (:func:`scan_fwd`, :func:`scan_bwd`) that launch the kernels on
validated inputs; autograd lives with the registered operator.

Both layouts run on the same kernels, which take every tensor's strides:
channel-major u/delta/z/out (batch, dim, L) with B/C (batch, G, N, L), and
time-major u/delta/z/out (batch, L, dim) with B/C (batch, L, G, N). Triton
specialises strides equal to 1, so the loads are coalesced along L
(channel-major) or along the channels (time-major) with no copy.

One program per (batch, block of BLOCK_D channels); channels of a block share
one B/C group. The program walks the sequence in chunks of BLOCK_L steps.
Inside a chunk the recurrence ``h_t = a_t h_{t-1} + x_t`` (``a = exp(delta A)``,
``x = delta u B``) is a parallel ``tl.associative_scan`` over (BLOCK_D, N,
BLOCK_L) tiles with the first-order operator ``(a1, b1) o (a2, b2) = (a1 a2,
a2 b1 + b2)``; the state (BLOCK_D, N) is carried in registers between chunks,
in float32.

The forward pass stores only the state entering each chunk (when asked),
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

_ALLOWED = (torch.float16, torch.bfloat16, torch.float32)


@triton.jit
def _first_order(a1, b1, a2, b2):
    return a1 * a2, a2 * b1 + b2


@triton.jit
def _rows(ptr, pid_b, offs_d, s_b, s_d):
    """Pointers to the start of each channel's sequence, (BLOCK_D,) (64-bit batch offset)."""
    return ptr + pid_b.to(tl.int64) * s_b + offs_d * s_d


@triton.jit
def _delta(rows, s_l, offs_l, bias, mask, HAS_BIAS: tl.constexpr, SOFTPLUS: tl.constexpr):
    """delta (+ bias) (softplus), 0 where masked: masked steps have a = 1, x = 0."""
    raw = tl.load(rows[:, None] + offs_l[None, :] * s_l, mask=mask, other=0.0).to(tl.float32)
    if HAS_BIAS:
        raw = raw + bias[:, None]
    dt = raw
    if SOFTPLUS:
        dt = tl.where(raw <= 20.0, tl.log(1.0 + tl.exp(raw)), raw)
    return tl.where(mask, dt, 0.0), raw


@triton.jit
def _block_setup(pid_b, pid_d, A_ptr, bias_ptr, D_ptr, dg,
                 N: tl.constexpr, NP: tl.constexpr, BLOCK_D: tl.constexpr,
                 HAS_BIAS: tl.constexpr, HAS_D: tl.constexpr):
    """What both kernels need for their (batch, channel block): channel and state
    offsets, the B/C group, A (BLOCK_D, NP), dt bias and D (zeros when absent)."""
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
    return offs_d, offs_n, mask_n, group, A, bias, Dv


@triton.jit
def _fwd_kernel(u_ptr, delta_ptr, A_ptr, B_ptr, C_ptr, D_ptr, z_ptr, bias_ptr,
                out_ptr, states_ptr, last_ptr,
                dim, L, dg, n_chunks,
                su_b, su_d, su_l, sdt_b, sdt_d, sdt_l, sz_b, sz_d, sz_l,
                so_b, so_d, so_l,
                sB_b, sB_g, sB_n, sB_l, sC_b, sC_g, sC_n, sC_l,
                N: tl.constexpr, NP: tl.constexpr, BLOCK_D: tl.constexpr, BLOCK_L: tl.constexpr,
                HAS_D: tl.constexpr, HAS_Z: tl.constexpr, HAS_BIAS: tl.constexpr,
                SOFTPLUS: tl.constexpr, SAVE: tl.constexpr):
    pid_b = tl.program_id(0)
    pid_d = tl.program_id(1)
    arange_l = tl.arange(0, BLOCK_L)
    offs_d, offs_n, mask_n, group, A, bias, Dv = _block_setup(
        pid_b, pid_d, A_ptr, bias_ptr, D_ptr, dg, N, NP, BLOCK_D, HAS_BIAS, HAS_D)
    u_rows = _rows(u_ptr, pid_b, offs_d, su_b, su_d)
    dt_rows = _rows(delta_ptr, pid_b, offs_d, sdt_b, sdt_d)
    o_rows = _rows(out_ptr, pid_b, offs_d, so_b, so_d)
    B_rows = _rows(B_ptr, pid_b, offs_n, sB_b, sB_n) + group * sB_g  # (NP,)
    C_rows = _rows(C_ptr, pid_b, offs_n, sC_b, sC_n) + group * sC_g
    # (BLOCK_D, NP) offsets into the (batch, dim, n_chunks, N) boundary states.
    state_off = ((pid_b * dim + offs_d[:, None]).to(tl.int64) * n_chunks) * N + offs_n[None, :]
    h = tl.zeros([BLOCK_D, NP], dtype=tl.float32)
    for k in range(0, n_chunks):
        if SAVE:
            tl.store(states_ptr + state_off + k * N, h, mask=mask_n[None, :])
        offs_l = k * BLOCK_L + arange_l
        mask_l = offs_l < L
        mask = mask_l[None, :] & (offs_d[:, None] < dim)
        u = tl.load(u_rows[:, None] + offs_l[None, :] * su_l, mask=mask, other=0.0).to(tl.float32)
        dt, raw = _delta(dt_rows, sdt_l, offs_l, bias, mask, HAS_BIAS, SOFTPLUS)
        bc_mask = mask_n[:, None] & mask_l[None, :]
        Bt = tl.load(B_rows[:, None] + offs_l[None, :] * sB_l, mask=bc_mask, other=0.0)
        Ct = tl.load(C_rows[:, None] + offs_l[None, :] * sC_l, mask=bc_mask, other=0.0)
        a = tl.exp(dt[:, None, :] * A[:, :, None])
        x = (dt * u)[:, None, :] * Bt.to(tl.float32)[None, :, :]
        a_cum, x_cum = tl.associative_scan((a, x), 2, _first_order)
        hs = a_cum * h[:, :, None] + x_cum
        y = tl.sum(hs * Ct.to(tl.float32)[None, :, :], axis=1)
        h = tl.sum(tl.where((arange_l == BLOCK_L - 1)[None, None, :], hs, 0.0), axis=2)
        if HAS_D:
            y += Dv[:, None] * u
        if HAS_Z:
            z_rows = _rows(z_ptr, pid_b, offs_d, sz_b, sz_d)
            z = tl.load(z_rows[:, None] + offs_l[None, :] * sz_l, mask=mask,
                        other=0.0).to(tl.float32)
            y = y * z * tl.sigmoid(z)
        tl.store(o_rows[:, None] + offs_l[None, :] * so_l, y.to(out_ptr.dtype.element_ty),
                 mask=mask)
    tl.store(last_ptr + (pid_b * dim + offs_d[:, None]) * N + offs_n[None, :], h,
             mask=mask_n[None, :])


@triton.jit
def _bwd_kernel(u_ptr, delta_ptr, A_ptr, B_ptr, C_ptr, D_ptr, z_ptr, bias_ptr,
                dout_ptr, states_ptr, dlast_ptr,
                du_ptr, ddelta_ptr, dz_ptr, dA_ptr, dB_ptr, dC_ptr, dD_ptr, dbias_ptr,
                dim, L, dg, n_chunks, n_blocks,
                su_b, su_d, su_l, sdt_b, sdt_d, sdt_l, sz_b, sz_d, sz_l,
                sdo_b, sdo_d, sdo_l, sg_b, sg_d, sg_l,
                sB_b, sB_g, sB_n, sB_l, sC_b, sC_g, sC_n, sC_l,
                sp_b, sp_k, sp_n, sp_l,
                N: tl.constexpr, NP: tl.constexpr, BLOCK_D: tl.constexpr, BLOCK_L: tl.constexpr,
                HAS_D: tl.constexpr, HAS_Z: tl.constexpr, HAS_BIAS: tl.constexpr,
                SOFTPLUS: tl.constexpr, HAS_DLAST: tl.constexpr):
    pid_b = tl.program_id(0)
    pid_d = tl.program_id(1)
    arange_l = tl.arange(0, BLOCK_L)
    offs_d, offs_n, mask_n, group, A, bias, Dv = _block_setup(
        pid_b, pid_d, A_ptr, bias_ptr, D_ptr, dg, N, NP, BLOCK_D, HAS_BIAS, HAS_D)
    u_rows = _rows(u_ptr, pid_b, offs_d, su_b, su_d)
    dt_rows = _rows(delta_ptr, pid_b, offs_d, sdt_b, sdt_d)
    do_rows = _rows(dout_ptr, pid_b, offs_d, sdo_b, sdo_d)
    # du, ddelta (and dz) are contiguous in the layout: one set of strides (sg_*).
    du_rows = _rows(du_ptr, pid_b, offs_d, sg_b, sg_d)
    ddt_rows = _rows(ddelta_ptr, pid_b, offs_d, sg_b, sg_d)
    B_rows = _rows(B_ptr, pid_b, offs_n, sB_b, sB_n) + group * sB_g
    C_rows = _rows(C_ptr, pid_b, offs_n, sC_b, sC_n) + group * sC_g
    # Rows of this block's dB/dC partials, (batch, n_blocks, N, L) in the layout's order.
    dB_rows = _rows(dB_ptr, pid_b, offs_n, sp_b, sp_n) + pid_d * sp_k
    dC_rows = _rows(dC_ptr, pid_b, offs_n, sp_b, sp_n) + pid_d * sp_k
    state_off = ((pid_b * dim + offs_d[:, None]).to(tl.int64) * n_chunks) * N + offs_n[None, :]
    # (BLOCK_D, NP) offsets into (batch, dim, N) tensors.
    dn_off = (pid_b * dim + offs_d[:, None]) * N + offs_n[None, :]
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
        mask = mask_l[None, :] & (offs_d[:, None] < dim)
        u = tl.load(u_rows[:, None] + offs_l[None, :] * su_l, mask=mask, other=0.0).to(tl.float32)
        dt, raw = _delta(dt_rows, sdt_l, offs_l, bias, mask, HAS_BIAS, SOFTPLUS)
        # delta of the next step inside the chunk (1 - decay at the chunk end).
        mask_next = mask & (arange_l < BLOCK_L - 1)[None, :] & ((offs_l + 1) < L)[None, :]
        dt_next, _ = _delta(dt_rows, sdt_l, offs_l + 1, bias, mask_next, HAS_BIAS, SOFTPLUS)
        bc_mask = mask_n[:, None] & mask_l[None, :]
        Bt = tl.load(B_rows[:, None] + offs_l[None, :] * sB_l, mask=bc_mask,
                     other=0.0).to(tl.float32)
        Ct = tl.load(C_rows[:, None] + offs_l[None, :] * sC_l, mask=bc_mask,
                     other=0.0).to(tl.float32)
        # Recompute the chunk's states from the stored boundary state.
        h0 = tl.load(states_ptr + state_off + k * N, mask=mask_n[None, :], other=0.0)
        a = tl.exp(dt[:, None, :] * A[:, :, None])
        dtu = dt * u
        x = dtu[:, None, :] * Bt[None, :, :]
        a_cum, x_cum = tl.associative_scan((a, x), 2, _first_order)
        hs = a_cum * h0[:, :, None] + x_cum
        dy = tl.load(do_rows[:, None] + offs_l[None, :] * sdo_l, mask=mask,
                     other=0.0).to(tl.float32)
        if HAS_Z:
            y = tl.sum(hs * Ct[None, :, :], axis=1)
            if HAS_D:
                y += Dv[:, None] * u
            z_rows = _rows(z_ptr, pid_b, offs_d, sz_b, sz_d)
            z = tl.load(z_rows[:, None] + offs_l[None, :] * sz_l, mask=mask,
                        other=0.0).to(tl.float32)
            sig = tl.sigmoid(z)
            dz = dy * y * sig * (1.0 + z * (1.0 - sig))
            dz_rows = _rows(dz_ptr, pid_b, offs_d, sg_b, sg_d)
            tl.store(dz_rows[:, None] + offs_l[None, :] * sg_l, dz.to(dz_ptr.dtype.element_ty),
                     mask=mask)
            dy = dy * z * sig
        dD_acc += tl.sum(dy * u, axis=1)
        tl.store(dC_rows[:, None] + offs_l[None, :] * sp_l, tl.sum(dy[:, None, :] * hs, axis=0),
                 mask=bc_mask)
        # Adjoint states: g_t = dy_t C_t + a_{t+1} g_{t+1}, reverse scan, plus the carry.
        a_next = tl.exp(dt_next[:, None, :] * A[:, :, None])
        dh = dy[:, None, :] * Ct[None, :, :]
        g_cum, g_loc = tl.associative_scan((a_next, dh), 2, _first_order, reverse=True)
        g = g_loc + g_cum * carry[:, :, None]
        carry = tl.sum(tl.where((arange_l == 0)[None, None, :], a * g, 0.0), axis=2)
        ddA = g * (hs - x)  # dL/d(delta A) = g_t a_t h_{t-1}
        dA_acc += tl.sum(ddA * dt[:, None, :], axis=2)
        gB = tl.sum(g * Bt[None, :, :], axis=1)
        tl.store(dB_rows[:, None] + offs_l[None, :] * sp_l, tl.sum(g * dtu[:, None, :], axis=0),
                 mask=bc_mask)
        ddt = tl.sum(ddA * A[:, :, None], axis=1) + gB * u
        du = gB * dt + Dv[:, None] * dy
        tl.store(du_rows[:, None] + offs_l[None, :] * sg_l, du.to(du_ptr.dtype.element_ty),
                 mask=mask)
        if SOFTPLUS:
            ddt = ddt * tl.sigmoid(raw)
        ddt = tl.where(mask, ddt, 0.0)
        dbias_acc += tl.sum(ddt, axis=1)
        tl.store(ddt_rows[:, None] + offs_l[None, :] * sg_l,
                 ddt.to(ddelta_ptr.dtype.element_ty), mask=mask)
    tl.store(dA_ptr + dn_off, dA_acc, mask=mask_n[None, :])
    tl.store(dD_ptr + pid_b * dim + offs_d, dD_acc)
    tl.store(dbias_ptr + pid_b * dim + offs_d, dbias_acc)


def block_sizes(dim, G, N, backward, time_major, interpreted=None):
    """Launch parameters of the kernels: BLOCK_D, BLOCK_L, NP and num_warps.

    The tiles are (BLOCK_D, NP, BLOCK_L) elements, NP the state size rounded up
    to a power of two. BLOCK_D is a power of two dividing dim // G, so a block's
    channels share one B/C group. BLOCK_L depends only on N (forward and
    backward chunk alike; the boundary states of :func:`states_shape`). The
    sizes keep both kernels free of register spills on sm_80/sm_90 (checked by
    tests/test_triton_compile.py); they are not tuned by GPU timings yet, and
    both layouts use the same ones.

    Args:
        dim (int): channels.
        G (int): B/C groups.
        N (int): state size.
        backward (bool): the backward kernel keeps about twice as many tiles
            live: half-size tiles.
        time_major (bool): the layout.
        interpreted (bool, optional): sizes for Triton's interpreter (small
            chunks; it pays per element). ``None``: whether ``TRITON_INTERPRET=1``.

    Returns:
        dict: keyword arguments of the kernel launch.
    """
    del time_major  # same tiles for both layouts until GPU timings say otherwise
    if interpreted is None:
        interpreted = triton_interpreted()
    NP = triton.next_power_of_2(N)
    if interpreted:
        BLOCK_L, cap = 16, (4 if backward else 8)
    else:
        BLOCK_L = 64 if NP <= 4 else 32
        tile = (1024 if NP == 1 else 2048) // (2 if backward else 1)
        cap = max(1, tile // (NP * BLOCK_L))
    dg = dim // G
    BLOCK_D = 1
    while BLOCK_D * 2 <= cap and dg % (BLOCK_D * 2) == 0:
        BLOCK_D *= 2
    return dict(BLOCK_D=BLOCK_D, BLOCK_L=BLOCK_L, NP=NP, num_warps=4)


def states_shape(batch, dim, L, N):
    """Shape of the boundary states :func:`scan_fwd` saves: (batch, dim, n_chunks, N)."""
    BLOCK_L = block_sizes(dim, 1, N, backward=False, time_major=False)['BLOCK_L']
    return batch, dim, triton.cdiv(L, BLOCK_L), N


NUM_RESIDUALS = 1


def fake_residuals(u, A, time_major):
    """Empty tensors shaped like the residuals of :func:`scan_fwd` (the op's fake impl)."""
    batch = u.shape[0]
    L, dim = (u.shape[1], u.shape[2]) if time_major else (u.shape[2], u.shape[1])
    return (u.new_empty(states_shape(batch, dim, L, A.shape[1]), dtype=torch.float32), )


def _seq_strides(t, time_major):
    """(batch, channel, step) strides of a (batch, dim, L) / (batch, L, dim) tensor."""
    if time_major:
        return t.stride(0), t.stride(2), t.stride(1)
    return tuple(t.stride())


def _bc_strides(t, time_major):
    """(batch, group, state, step) strides of B/C in (batch, G, N, L) / (batch, L, G, N)."""
    if time_major:
        return t.stride(0), t.stride(2), t.stride(3), t.stride(1)
    return tuple(t.stride())


def _dims(u, B, time_major):
    if time_major:
        (batch, L, dim), (G, N) = u.shape, B.shape[2:]
    else:
        (batch, dim, L), (G, N) = u.shape, B.shape[1:3]
    return batch, dim, L, G, N


def _check(tensors):
    for name, t in tensors.items():
        if t is not None and t.dtype not in _ALLOWED:
            raise TypeError(f'selective_scan: backend triton supports fp16/bf16/fp32 inputs, '
                            f'{name} is {t.dtype} (use backend="torch" or cast explicitly)')
    check_triton_device('selective_scan', tensors['u'])


def _fp32(t):
    return t.float().contiguous() if t is not None else None


def fwd_launch(u, delta, A, B, C, D, z, delta_bias, delta_softplus, time_major, save):
    """The forward kernel's launch for these inputs: ``(grid, args, kwargs,
    (out, last_state, states))`` with the outputs allocated on ``u``'s device
    (meta tensors give the launch of real shapes without memory; the
    ahead-of-time compile test uses that)."""
    batch, dim, L, G, N = _dims(u, B, time_major)
    kw = block_sizes(dim, G, N, backward=False, time_major=time_major)
    n_chunks = triton.cdiv(L, kw['BLOCK_L'])
    out = torch.empty(u.shape, dtype=u.dtype, device=u.device)  # contiguous in the layout
    last = u.new_empty(batch, dim, N, dtype=torch.float32)
    states = (u.new_empty(batch, dim, n_chunks, N, dtype=torch.float32) if save
              else u.new_empty(0, dtype=torch.float32))
    zz = z if z is not None else u  # strides only: never read without z
    args = (u, delta, _fp32(A), B, C, _fp32(D), z, _fp32(delta_bias), out, states, last,
            dim, L, dim // G, n_chunks,
            *_seq_strides(u, time_major), *_seq_strides(delta, time_major),
            *_seq_strides(zz, time_major), *_seq_strides(out, time_major),
            *_bc_strides(B, time_major), *_bc_strides(C, time_major))
    kw.update(N=N, HAS_D=D is not None, HAS_Z=z is not None, HAS_BIAS=delta_bias is not None,
              SOFTPLUS=bool(delta_softplus), SAVE=bool(save))
    return (batch, dim // kw['BLOCK_D']), args, kw, (out, last, states)


def scan_fwd(u, delta, A, B, C, D, z, delta_bias, delta_softplus, time_major, save):
    """Forward selective scan (inputs validated; any strides).

    Args:
        u, delta (Tensor): (batch, dim, L), or (batch, L, dim) if ``time_major``.
        A (Tensor): (dim, N).
        B, C (Tensor): (batch, G, N, L), or (batch, L, G, N) if ``time_major``.
        D, delta_bias (Tensor | None): (dim,).
        z (Tensor | None): like ``u``.
        delta_softplus (bool): softplus on ``delta + delta_bias``.
        time_major (bool): the layout.
        save (bool): keep the chunk-boundary states the backward needs.

    Returns:
        tuple: ``out`` (like ``u``, contiguous in the layout, ``u``'s dtype),
        ``last_state`` (batch, dim, N) float32, and the residuals: ``(states,)``,
        (batch, dim, n_chunks, N) float32, if ``save`` else ``()``.

    Raises:
        TypeError: for inputs other than fp16/bf16/fp32.
        RuntimeError: for CPU tensors without ``TRITON_INTERPRET=1``.
    """
    _check(dict(u=u, delta=delta, A=A, B=B, C=C, D=D, z=z, delta_bias=delta_bias))
    grid, args, kw, (out, last, states) = fwd_launch(u, delta, A, B, C, D, z, delta_bias,
                                                     delta_softplus, time_major, save)
    _fwd_kernel[grid](*args, **kw)
    return out, last, ((states, ) if save else ())


def bwd_launch(dout, dlast, u, delta, A, B, C, D, z, delta_bias, states, delta_softplus,
               time_major):
    """The backward kernel's launch: ``(grid, args, kwargs, finish)``; ``finish()``
    reduces the per-block partials into the gradients of :func:`scan_bwd`."""
    batch, dim, L, G, N = _dims(u, B, time_major)
    kw = block_sizes(dim, G, N, backward=True, time_major=time_major)
    n_chunks = triton.cdiv(L, kw['BLOCK_L'])
    if tuple(states.shape) != (batch, dim, n_chunks, N):
        raise ValueError(f'selective_scan backward: saved states have shape '
                         f'{tuple(states.shape)}, expected {(batch, dim, n_chunks, N)} '
                         f'(run the forward with save=True)')
    n_blocks = dim // kw['BLOCK_D']
    if dout is None:
        dout = torch.zeros_like(u)
    f32 = dict(dtype=torch.float32, device=u.device)
    shape = tuple(u.shape)
    du = torch.empty(shape, dtype=u.dtype, device=u.device)
    ddelta = torch.empty(shape, dtype=delta.dtype, device=u.device)
    dz = torch.empty(shape, dtype=z.dtype, device=u.device) if z is not None else None
    dA = torch.empty(batch, dim, N, **f32)
    # Per-block partials of dB/dC, float32, in the layout's order.
    part = (batch, L, n_blocks, N) if time_major else (batch, n_blocks, N, L)
    dB = torch.empty(part, **f32)
    dC = torch.empty(part, **f32)
    dD = torch.empty(batch, dim, **f32)
    dbias = torch.empty(batch, dim, **f32)
    zz = z if z is not None else u
    args = (u, delta, _fp32(A), B, C, _fp32(D), z, _fp32(delta_bias), dout, states,
            _fp32(dlast), du, ddelta, dz, dA, dB, dC, dD, dbias,
            dim, L, dim // G, n_chunks, n_blocks,
            *_seq_strides(u, time_major), *_seq_strides(delta, time_major),
            *_seq_strides(zz, time_major), *_seq_strides(dout, time_major),
            *_seq_strides(du, time_major),
            *_bc_strides(B, time_major), *_bc_strides(C, time_major),
            *_bc_strides(dB, time_major))
    kw.update(N=N, HAS_D=D is not None, HAS_Z=z is not None, HAS_BIAS=delta_bias is not None,
              SOFTPLUS=bool(delta_softplus), HAS_DLAST=dlast is not None)

    def finish():
        per_group = n_blocks // G
        if time_major:
            dB_, dC_ = (t.view(batch, L, G, per_group, N).sum(3) for t in (dB, dC))
        else:
            dB_, dC_ = (t.view(batch, G, per_group, N, L).sum(2) for t in (dB, dC))
        return (du, ddelta, dA.sum(0).to(A.dtype), dB_.to(B.dtype), dC_.to(C.dtype),
                dD.sum(0).to(D.dtype) if D is not None else None,
                dz, dbias.sum(0).to(delta_bias.dtype) if delta_bias is not None else None)

    return (batch, n_blocks), args, kw, finish


def scan_bwd(dout, dlast, u, delta, A, B, C, D, z, delta_bias, states, delta_softplus,
             time_major):
    """Backward selective scan from the states :func:`scan_fwd` saved.

    Args:
        dout (Tensor | None): gradient of ``out``, any strides (None: zeros).
        dlast (Tensor | None): gradient of ``last_state``, (batch, dim, N).
        u, delta, A, B, C, D, z, delta_bias: the forward's inputs.
        states (Tensor): the forward's saved states (``save=True``).
        delta_softplus (bool), time_major (bool): as in the forward.

    Returns:
        tuple: ``(du, ddelta, dA, dB, dC, dD, dz, ddelta_bias)``, each in its
        input's shape, layout (contiguous) and dtype; None for absent inputs.
    """
    _check(dict(u=u, delta=delta, A=A, B=B, C=C, D=D, z=z, delta_bias=delta_bias))
    grid, args, kw, finish = bwd_launch(dout, dlast, u, delta, A, B, C, D, z, delta_bias,
                                        states, delta_softplus, time_major)
    _bwd_kernel[grid](*args, **kw)
    return finish()
