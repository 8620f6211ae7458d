"""Readable reference of the selective scan (the 'reference' backend): the ground truth.

A per-step loop over the sequence, exactly the recurrence of Mamba's S6:

    delta <- softplus(delta + delta_bias)            (when asked)
    h_t    = exp(delta_t * A) * h_{t-1} + delta_t * B_t * u_t
    y_t    = <C_t, h_t> + D * u_t
    out    = y * silu(z)                              (when z is given)

Autograd through the loop gives every gradient.
"""
import torch
import torch.nn.functional as F


def selective_scan_naive(u, delta, A, B, C, D=None, z=None, delta_bias=None,
                         delta_softplus=False, return_last_state=False):
    """Reference selective scan (arguments already validated and normalised).

    Args:
        u, delta (Tensor): (batch, dim, L).
        A (Tensor): (dim, N), real.
        B, C (Tensor): (batch, G, N, L), dim % G == 0.
        D, delta_bias (Tensor, optional): (dim,).
        z (Tensor, optional): (batch, dim, L).
        delta_softplus (bool): apply softplus to ``delta + delta_bias``.
        return_last_state (bool): also return h_L, (batch, dim, N) float32.
    """
    dtype_in = u.dtype
    acc = torch.float64 if u.dtype == torch.float64 else torch.float32
    u, delta, A, B, C = (t.to(acc) for t in (u, delta, A, B, C))
    batch, dim, L = u.shape
    G = B.shape[1]
    if delta_bias is not None:
        delta = delta + delta_bias.to(acc)[:, None]
    if delta_softplus:
        delta = F.softplus(delta)
    # Expand the groups to channels: channel d uses group d // (dim // G).
    B = B.repeat_interleave(dim // G, dim=1)  # (batch, dim, N, L)
    C = C.repeat_interleave(dim // G, dim=1)
    h = u.new_zeros(batch, dim, A.shape[1])
    ys = []
    # unbind (not indexing) per step keeps the backward linear in L.
    steps = zip(delta.unbind(-1), u.unbind(-1), B.unbind(-1), C.unbind(-1))
    for delta_t, u_t, B_t, C_t in steps:
        dA = torch.exp(delta_t[:, :, None] * A)
        h = dA * h + (delta_t * u_t)[:, :, None] * B_t
        ys.append((h * C_t).sum(-1))
    y = torch.stack(ys, dim=-1) if L else u.new_zeros(batch, dim, 0)
    if D is not None:
        y = y + D.to(acc)[:, None] * u
    if z is not None:
        y = y * F.silu(z.to(acc))
    out = y.to(dtype_in)
    if return_last_state:
        return out, h.float() if acc == torch.float32 else h
    return out


# ---------------------------------------------------------------- the 'reference' backend
NUM_RESIDUALS = 0


def _channel_major(u, delta, B, C, z, time_major):
    """Views of time-major arguments in the channel-major layout of :func:`selective_scan_naive`."""
    if not time_major:
        return u, delta, B, C, z
    tr = (lambda t: None if t is None else t.transpose(1, 2))
    return tr(u), tr(delta), B.permute(0, 2, 3, 1), C.permute(0, 2, 3, 1), tr(z)


def scan_fwd(u, delta, A, B, C, D, z, delta_bias, delta_softplus, time_major, save):
    """Backend entry (see ``vmamba_mm/ops/selective_scan/op.py``): the loop, no residuals."""
    u_c, delta_c, B_c, C_c, z_c = _channel_major(u, delta, B, C, z, time_major)
    out, last = selective_scan_naive(u_c, delta_c, A, B_c, C_c, D, z_c, delta_bias,
                                     delta_softplus, return_last_state=True)
    if time_major:
        out = out.transpose(1, 2)
    return out.contiguous(), last, ()


def fake_residuals(u, A, time_major):
    return ()


def scan_bwd(dout, dlast, u, delta, A, B, C, D, z, delta_bias, delta_softplus, time_major):
    """Backend entry: the loop's gradients by ``torch.func.vjp`` (recomputes the forward)."""
    inputs = (u, delta, A, B, C, D, z, delta_bias)
    present = [i for i, t in enumerate(inputs) if t is not None]

    def forward(*tensors):
        args = list(inputs)
        for i, t in zip(present, tensors):
            args[i] = t
        out, last, _ = scan_fwd(*args, delta_softplus, time_major, False)
        return out, last

    (out, last), vjp = torch.func.vjp(forward, *(inputs[i] for i in present))
    grads = vjp((dout.to(out.dtype), torch.zeros_like(last) if dlast is None else dlast.to(last.dtype)))
    full = [None] * len(inputs)
    for i, g in zip(present, grads):
        full[i] = g
    return tuple(full)
