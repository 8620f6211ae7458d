"""The shared selective-scan operator (Mamba-1 S6), one public function."""
import torch

from .naive import selective_scan_naive
from ..backend import BACKENDS, ENV_BACKEND, pick_backend  # noqa: F401


def _check(u, delta, A, B, C, D, z, delta_bias):
    """Validate shapes/dtypes/devices; return B, C as (batch, G, N, L)."""
    for name, t in (('u', u), ('delta', delta), ('A', A), ('B', B), ('C', C)):
        if not isinstance(t, torch.Tensor):
            raise TypeError(f'selective_scan: {name} must be a Tensor, got {type(t).__name__}')
    if u.dim() != 3:
        raise ValueError(f'selective_scan: u must be (batch, dim, L), got shape {tuple(u.shape)}')
    batch, dim, L = u.shape
    if L == 0:
        raise ValueError(f'selective_scan: empty sequence, u has shape {tuple(u.shape)} '
                         f'(L must be >= 1)')
    if delta.shape != u.shape:
        raise ValueError(f'selective_scan: delta shape {tuple(delta.shape)} != '
                         f'u shape {tuple(u.shape)}')
    if A.is_complex():
        raise TypeError('selective_scan: complex A is not supported (A must be real, (dim, N))')
    if A.dim() != 2 or A.shape[0] != dim:
        raise ValueError(f'selective_scan: A must be (dim={dim}, N), got shape {tuple(A.shape)}')
    N = A.shape[1]
    BC = []
    for name, t in (('B', B), ('C', C)):
        if t.is_complex():
            raise TypeError(f'selective_scan: complex {name} is not supported')
        if t.dim() == 3:
            t = t.unsqueeze(1)
        if t.dim() != 4 or t.shape[0] != batch or t.shape[2] != N or t.shape[3] != L:
            raise ValueError(
                f'selective_scan: {name} must be (batch={batch}, G, N={N}, L={L}) or '
                f'(batch, N, L), got shape {tuple(t.shape)}')
        BC.append(t)
    B, C = BC
    if B.shape[1] != C.shape[1]:
        raise ValueError(f'selective_scan: B and C have different group counts: '
                         f'{tuple(B.shape)} vs {tuple(C.shape)}')
    G = B.shape[1]
    if G == 0 or dim % G != 0:
        raise ValueError(f'selective_scan: dim={dim} is not divisible by the group count '
                         f'G={G} of B/C')
    for name, t in (('D', D), ('delta_bias', delta_bias)):
        if t is not None and tuple(t.shape) != (dim,):
            raise ValueError(f'selective_scan: {name} must be (dim={dim},), '
                             f'got shape {tuple(t.shape)}')
    if z is not None and z.shape != u.shape:
        raise ValueError(f'selective_scan: z shape {tuple(z.shape)} != u shape {tuple(u.shape)}')
    floats = (torch.float16, torch.bfloat16, torch.float32, torch.float64)
    tensors = dict(u=u, delta=delta, A=A, B=B, C=C, D=D, z=z, delta_bias=delta_bias)
    for name, t in tensors.items():
        if t is None:
            continue
        if t.dtype not in floats:
            raise TypeError(f'selective_scan: {name} has dtype {t.dtype}; '
                            f'expected a floating dtype')
        if t.device != u.device:
            raise ValueError(f'selective_scan: {name} is on {t.device} but u is on {u.device}')
    return B, C


def selective_scan(u, delta, A, B, C, D=None, z=None, delta_bias=None, delta_softplus=False,
                   return_last_state=False, backend=None):
    """Selective scan with the semantics of mamba_ssm's ``selective_scan_fn``.

    Args:
        u (Tensor): input, (batch, dim, L).
        delta (Tensor): time steps, (batch, dim, L).
        A (Tensor): state matrix (diagonal), (dim, N), real.
        B (Tensor): input projection, (batch, G, N, L) or (batch, N, L).
        C (Tensor): output projection, same layout as ``B``.
        D (Tensor, optional): skip connection, (dim,).
        z (Tensor, optional): gate, (batch, dim, L); output is ``y * silu(z)``.
        delta_bias (Tensor, optional): (dim,), added to ``delta``.
        delta_softplus (bool): apply softplus to ``delta + delta_bias``.
        return_last_state (bool): also return the final state (batch, dim, N), float32.
        backend (str, optional): 'reference', 'torch' or 'triton'. ``None``: the
            environment variable ``VMAMBA_MM_SCAN_BACKEND`` if set, else 'triton'
            for CUDA tensors and 'torch' otherwise.

    Returns:
        Tensor (batch, dim, L) in ``u``'s dtype, and the last state if asked.
    """
    B, C = _check(u, delta, A, B, C, D, z, delta_bias)
    backend = pick_backend('selective_scan', backend, u)
    args = (u, delta, A, B, C, D, z, delta_bias, delta_softplus, return_last_state)
    if backend == 'reference':
        return selective_scan_naive(*args)
    if backend == 'torch':
        from .chunked import selective_scan_chunked
        return selective_scan_chunked(*args)
    try:
        from .kernels import selective_scan_triton
    except ImportError as e:  # triton is optional: only this backend needs it
        raise ImportError(f"selective_scan backend 'triton' needs the triton package ({e}); "
                          f"install triton or use backend='torch'") from e
    return selective_scan_triton(*args)


__all__ = ['selective_scan', 'selective_scan_naive', 'BACKENDS']
