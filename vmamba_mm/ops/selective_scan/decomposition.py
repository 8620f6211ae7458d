"""The selective scan as standard tensor operations, for export (ONNX and others).

The same computation as :func:`selective_scan_naive` (softplus, decays
``a_l = exp(delta_l * A)``, the recurrence ``h_l = a_l h_{l-1} + delta_l u_l B_l``,
``y_l = <C_l, h_l> + D u_l``, the gate) written without in-place operations,
data-dependent control flow or a loop whose length depends on L, so that
``torch.export`` traces it once for every sequence length and every operation
maps to a standard ONNX operator (Mul, Add, Exp, CumSum, Where, ReduceSum,
Softplus, Pad, Reshape, Concat, Split).

The sequence is zero-padded (time step 0: decay 1, input 0, so the padding
changes no state) to ``n * SPAN`` steps, ``SPAN = CHUNK * CHUNK``, and viewed as
(batch, n, CHUNK, CHUNK, ...): ``n`` blocks of CHUNK chunks of CHUNK steps.

1. Each chunk's end state from a zero start: CHUNK steps of the recurrence,
   all chunks at once (a loop of fixed length, unrolled in the graph).
2. Each block's end state from a zero start: the same over the chunk end
   states, with each chunk's decay ``exp(sum of delta * A)``.
3. The end states of all blocks at once, a pairwise form over the ``n`` blocks
   (n grows with L: no loop): ``H_i = sum_{j <= i} exp(S_ij) E_j`` with
   ``S_ij`` the sum of the block log-decays ``j < k <= i``, computed as masked
   cumulative sums (no difference of two large sums, so no cancellation), all
   ``S_ij <= 0`` when ``delta * A <= 0`` (stable).
4. Step 2 again from the true block start states: the start state of every chunk.
5. Step 1 again from the true chunk start states, folding in C (one output per
   step instead of N states).

Work: about twice the multiply-adds of the per-step loop plus ``n**2`` (tiny
for L up to tens of thousands: n = 13 for VMamba's 56 x 56 stage);
memory: a few (batch, L, dim, N) float32 tensors, plus (batch, n, n, dim, N).
"""
import torch
import torch.nn.functional as F

# Steps per chunk and chunks per block (fixed: the graph does not depend on L).
CHUNK = 16
SPAN = CHUNK * CHUNK


def softplus(x):
    """``log(1 + exp(x))`` from Exp, Log and arithmetic, exact to a few ulps.

    ``max(x, 0) + log1p(exp(-|x|))`` with ``log1p(v) = log(w) - ((w - 1) - v) / w``,
    ``w = 1 + v`` rounded (``w - 1`` and the difference are exact). onnxruntime's
    own Softplus is several times slower on CPU, and ONNX has no Log1p.
    """
    v = torch.exp(-x.abs())
    w = 1 + v
    return torch.relu(x) + (torch.log(w) - ((w - 1) - v) / w)


def _sum_state(x):
    """Sum over the trailing state dim N (a squeeze when N == 1)."""
    return x.squeeze(-1) if x.shape[-1] == 1 else x.sum(-1)


def _recurrence(a, x, h=None, out=None):
    """``h_t = a_t h_{t-1} + x_t`` over the steps of the lists ``a``, ``x`` from ``h``
    (None: zero).

    Returns the last state, or, with ``out``, also the list ``[out(h_t, t)]``.
    """
    outs = []
    for t in range(len(x)):
        h = x[t] if h is None else a[t] * h + x[t]
        if out is not None:
            outs.append(out(h, t))
    return h if out is None else (h, outs)


def _block_end_states(s, e):
    """End states of all blocks: ``H_i = sum_{j<=i} exp(sum_{j<k<=i} s_k) e_j`` along
    dim 1 (any length n), from the blocks' log-decays ``s`` and their end states
    from a zero start ``e``, both (batch, n, ...)."""
    n = s.shape[1]
    idx = torch.arange(n, device=s.device)
    trail = (1, ) * (s.dim() - 2)
    k = idx.view(n, 1, *trail)  # summed position (rows of the cumsum)
    j = idx.view(1, n, *trail)  # source block
    # seg[:, i, j] = sum over k <= i of s_k for k > j: the masked cumulative sum.
    seg = torch.where(k > j, s.unsqueeze(2), 0.0).cumsum(1)
    w = torch.exp(torch.where(k >= j, seg, float('-inf')))  # k plays i here
    return (w * e.unsqueeze(1)).sum(2)


def _shift_in(first, rest, dim):
    """``cat([first, rest[:-1]])`` along ``dim``: the state entering each position
    given the states leaving them and the state entering the first."""
    return torch.cat([first.unsqueeze(dim), rest.narrow(dim, 0, rest.shape[dim] - 1)], dim)


def selective_scan_decomposed(u, delta, A, B, C, D=None, z=None, delta_bias=None,
                              delta_softplus=False, time_major=False):
    """Selective scan from standard operations (export-friendly, differentiable).

    Arguments as the registered operator ``vmamba_mm::selective_scan_fwd``
    (already validated; B and C 4-D).

    Args:
        u, delta (Tensor): (batch, dim, L), or (batch, L, dim) if ``time_major``.
        A (Tensor): (dim, N).
        B, C (Tensor): (batch, G, N, L), or (batch, L, G, N) if ``time_major``.
        D, delta_bias (Tensor, optional): (dim,).
        z (Tensor, optional): the gate, shaped as ``u``.
        delta_softplus (bool): softplus on ``delta + delta_bias``.
        time_major (bool): the layout, see above.

    Returns:
        tuple[Tensor, Tensor]: the output, shaped as ``u``, contiguous, in ``u``'s
        dtype; the last state (batch, dim, N), float32 (float64 for float64 ``u``).
    """
    acc = torch.float64 if u.dtype == torch.float64 else torch.float32
    if not time_major:
        u, delta = u.transpose(1, 2), delta.transpose(1, 2)
        z = None if z is None else z.transpose(1, 2)
        B, C = B.permute(0, 3, 1, 2), C.permute(0, 3, 1, 2)
    batch, L, dim = u.shape
    G, N = B.shape[2], B.shape[3]
    dg = dim // G
    uf = u.to(acc)
    dt = delta.to(acc)
    if delta_bias is not None:
        dt = dt + delta_bias.to(acc)
    if delta_softplus:
        dt = softplus(dt)

    n = (L + SPAN - 1) // SPAN
    # Padding as a gather (positions >= L read position L - 1) on the (batch, L, ...)
    # inputs: the padded length is n * SPAN by construction, for any symbolic L.
    # Only the time steps need zeros there (decay 1, input 0).
    pos = torch.arange(n * SPAN, device=u.device)
    src = pos.clamp(max=L - 1)
    dt = torch.where((pos < L).view(1, n * SPAN, 1), dt.index_select(1, src), 0.0)
    uf_p = uf.index_select(1, src)
    B, C = (t.to(acc).index_select(1, src) for t in (B, C))

    def blocks(t):  # (batch, n * SPAN, ...) -> (batch, n, CHUNK, CHUNK, ...)
        return t.reshape(batch, n, CHUNK, CHUNK, *t.shape[2:])

    # Per step of the chunks, (batch, n, CHUNK, G, dim // G, N): decays exp(dt * A),
    # inputs dt * u * B, built from the step slices of the (N times smaller) inputs.
    Lp = n * SPAN
    A = A.to(acc).reshape(G, dg, N)
    dtu = blocks((dt * uf_p).reshape(batch, Lp, G, dg, 1))
    dt = blocks(dt.reshape(batch, Lp, G, dg, 1))
    B_t = blocks(B.reshape(batch, Lp, G, 1, N)).unbind(3)
    C_t = blocks(C.reshape(batch, Lp, G, 1, N)).unbind(3)
    a = [torch.exp(d * A) for d in dt.unbind(3)]
    x = [d * b for d, b in zip(dtu.unbind(3), B_t)]
    # Chunk decays from their log-decays sum(dt) * A: (batch, n, CHUNK, G, dg, N).
    s_chunk = dt.sum(3) * A
    a_chunk = torch.exp(s_chunk).unbind(2)
    # 1-2. End states of the chunks, then of the blocks, from zero.
    e_chunk = _recurrence(a, x).unbind(2)
    e_block = _recurrence(a_chunk, e_chunk)
    # 3. True end states of the blocks; the last one is the sequence's (padding keeps it).
    h_block = _block_end_states(s_chunk.sum(2), e_block)
    last = h_block[:, -1].reshape(batch, dim, N)
    # 4. True start state of every chunk: that of its block, then of the chunks after it.
    start_block = _shift_in(torch.zeros_like(h_block[:, 0]), h_block, 1)
    _, h_chunk = _recurrence(a_chunk, e_chunk, start_block, out=lambda h, t: h)
    start_chunk = torch.stack([start_block] + h_chunk[:-1], 2)
    # 5. All states from their true chunk starts, reduced with C step by step.
    _, y = _recurrence(a, x, start_chunk, out=lambda h, t: _sum_state(h * C_t[t]))
    y = torch.stack(y, 3)  # (batch, n, CHUNK, CHUNK, G, dg)
    y = y.reshape(batch, n * SPAN, dim).index_select(1, torch.arange(L, device=u.device))
    if D is not None:
        y = y + uf * D.to(acc)
    if z is not None:
        y = y * F.silu(z.to(acc))
    out = y.to(u.dtype)
    if not time_major:
        out = out.transpose(1, 2)
    return out.contiguous(), last
