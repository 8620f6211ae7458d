"""Readable reference of the selective scan: the ground truth for tests.

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
