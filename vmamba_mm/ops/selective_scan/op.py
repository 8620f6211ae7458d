"""The selective scan as a registered PyTorch operator (``torch.ops.vmamba_mm``).

Two custom operators, each one opaque node for autograd, torch.compile,
torch.export, ``FlopCounterMode`` and jit tracing:

``vmamba_mm::selective_scan_fwd(u, delta, A, B, C, D?, z?, delta_bias?, delta_softplus,
time_major, backend, save) -> (out, last_state, res0, res1)``
    ``res0``/``res1`` are what the backend keeps for the backward (empty when
    ``save`` is False, or when the backend keeps less).
``vmamba_mm::selective_scan_bwd(dout, dlast?, u, delta, A, B, C, D?, z?, delta_bias?,
res0, res1, delta_softplus, time_major, backend) -> (du, ddelta, dA, dB, dC, dD, dz, ddelta_bias)``
    Gradients of absent optional inputs are empty tensors.

The forward has a fake (meta) implementation and registered autograd (its
backward is the second operator, which has a fake implementation too), so a
compiled or exported graph holds these nodes instead of the backends' Python
loops. The backend (a name from :mod:`vmamba_mm.ops.backend`) is an argument:
:func:`selective_scan` resolves it before calling the operator.

A backend module implements ``scan_fwd(u, delta, A, B, C, D, z, delta_bias,
delta_softplus, time_major, save) -> (out, last_state, residuals)``,
``scan_bwd(dout, dlast, u, delta, A, B, C, D, z, delta_bias, *residuals,
delta_softplus, time_major) -> 8 gradients (None for absent inputs)``,
``NUM_RESIDUALS`` and ``fake_residuals(u, A, time_major)`` (see ``docs/ops.md``).
"""
from typing import Optional

import torch
import torch.utils.flop_counter
from torch import Tensor

from ..backend import backends, resolve

LAYOUTS = ('channel_major', 'time_major')


def _module(backend):
    return backends('selective_scan')[backend].implementation('selective_scan')


def _acc_dtype(u):
    return torch.float64 if u.dtype == torch.float64 else torch.float32


def _pad_residuals(u, residuals):
    """Exactly two residual tensors (empty ones in u's dtype fill the unused slots)."""
    residuals = tuple(residuals)
    if len(residuals) > 2:
        raise RuntimeError(f'selective_scan: a backend may keep at most 2 residual tensors, '
                           f'got {len(residuals)}')
    return residuals + tuple(u.new_empty(0) for _ in range(2 - len(residuals)))


@torch.library.custom_op('vmamba_mm::selective_scan_fwd', mutates_args=())
def selective_scan_fwd(u: Tensor, delta: Tensor, A: Tensor, B: Tensor, C: Tensor,
                       D: Optional[Tensor], z: Optional[Tensor], delta_bias: Optional[Tensor],
                       delta_softplus: bool, time_major: bool, backend: str,
                       save: bool) -> tuple[Tensor, Tensor, Tensor, Tensor]:
    out, last, residuals = _module(backend).scan_fwd(
        u, delta, A, B, C, D, z, delta_bias, delta_softplus, time_major, save)
    return (out, last) + _pad_residuals(u, residuals if save else ())


@selective_scan_fwd.register_fake
def _(u, delta, A, B, C, D, z, delta_bias, delta_softplus, time_major, backend, save):
    batch = u.shape[0]
    dim = u.shape[2] if time_major else u.shape[1]
    out = torch.empty(u.shape, dtype=u.dtype, device=u.device)
    last = u.new_empty(batch, dim, A.shape[1], dtype=_acc_dtype(u))
    residuals = _module(backend).fake_residuals(u, A, time_major) if save else ()
    return (out, last) + _pad_residuals(u, residuals)


def _empty_if_none(t, like):
    return like.new_empty(0) if t is None else t


@torch.library.custom_op('vmamba_mm::selective_scan_bwd', mutates_args=())
def selective_scan_bwd(dout: Tensor, dlast: Optional[Tensor], u: Tensor, delta: Tensor, A: Tensor,
                       B: Tensor, C: Tensor, D: Optional[Tensor], z: Optional[Tensor],
                       delta_bias: Optional[Tensor], res0: Tensor, res1: Tensor,
                       delta_softplus: bool, time_major: bool,
                       backend: str) -> tuple[Tensor, Tensor, Tensor, Tensor, Tensor, Tensor,
                                              Tensor, Tensor]:
    mod = _module(backend)
    residuals = (res0, res1)[:mod.NUM_RESIDUALS]
    grads = mod.scan_bwd(dout, dlast, u, delta, A, B, C, D, z, delta_bias, *residuals,
                         delta_softplus, time_major)
    inputs = (u, delta, A, B, C, D, z, delta_bias)
    return tuple(_empty_if_none(g, u) if t is None else g.contiguous()
                 for g, t in zip(grads, inputs))


@selective_scan_bwd.register_fake
def _(dout, dlast, u, delta, A, B, C, D, z, delta_bias, res0, res1, delta_softplus, time_major,
      backend):
    return tuple(u.new_empty(0) if t is None
                 else torch.empty(t.shape, dtype=t.dtype, device=t.device)
                 for t in (u, delta, A, B, C, D, z, delta_bias))


def _setup_context(ctx, inputs, output):
    u, delta, A, B, C, D, z, delta_bias, delta_softplus, time_major, backend, save = inputs
    _, _, res0, res1 = output
    if not save:
        raise RuntimeError('selective_scan_fwd: called with save=False where a gradient is '
                           'needed; call vmamba_mm.ops.selective_scan instead of the raw operator')
    ctx.save_for_backward(u, delta, A, B, C, D, z, delta_bias, res0, res1)
    ctx.flags = (delta_softplus, time_major, backend)
    ctx.mark_non_differentiable(res0, res1)
    ctx.set_materialize_grads(False)


def _backward(ctx, dout, dlast, _dres0, _dres1):
    u, delta, A, B, C, D, z, delta_bias, res0, res1 = ctx.saved_tensors
    if dout is None:
        dout = torch.zeros_like(u)
    grads = selective_scan_bwd(dout, dlast, u, delta, A, B, C, D, z, delta_bias, res0, res1,
                               *ctx.flags)
    grads = tuple(None if t is None else g
                  for g, t in zip(grads, (u, delta, A, B, C, D, z, delta_bias)))
    return grads + (None, ) * 4


selective_scan_fwd.register_autograd(_backward, setup_context=_setup_context)


def selective_scan_flops(batch, dim, length, d_state, with_D=True, with_z=False):
    """FLOPs of one selective scan, VMamba's count (``flops_selective_scan_fn``):
    ``9 * batch * dim * N * L`` (discretisation, recurrence and readout), plus
    ``batch * dim * L`` each for the skip term ``D`` and the gate ``z``."""
    flops = 9 * batch * dim * d_state * length
    flops += batch * dim * length * (int(with_D) + int(with_z))
    return flops


def _scan_sizes(u_shape, A_shape, time_major):
    """(batch, dim, L, N) from the operator's argument shapes."""
    batch, a, b = u_shape
    dim, length = (b, a) if time_major else (a, b)
    return batch, dim, length, A_shape[1]


@torch.utils.flop_counter.register_flop_formula(torch.ops.vmamba_mm.selective_scan_fwd)
def _fwd_flops(u_shape, delta_shape, A_shape, B_shape, C_shape, D_shape, z_shape,
               delta_bias_shape, delta_softplus, time_major, *args, out_shape=None, **kwargs):
    return selective_scan_flops(*_scan_sizes(u_shape, A_shape, time_major),
                                with_D=D_shape is not None, with_z=z_shape is not None)


def _check(u, delta, A, B, C, D, z, delta_bias, layout):
    """Validate shapes/dtypes/devices for ``layout``; return B, C as 4-D tensors."""
    time_major = layout == 'time_major'
    for name, t in (('u', u), ('delta', delta), ('A', A), ('B', B), ('C', C)):
        if not isinstance(t, torch.Tensor):
            raise TypeError(f'selective_scan: {name} must be a Tensor, got {type(t).__name__}')
    seq = '(batch, L, dim)' if time_major else '(batch, dim, L)'
    if u.dim() != 3:
        raise ValueError(f'selective_scan: u must be {seq} (layout={layout!r}), '
                         f'got shape {tuple(u.shape)}')
    batch = u.shape[0]
    L, dim = (u.shape[1], u.shape[2]) if time_major else (u.shape[2], u.shape[1])
    if L == 0:
        raise ValueError(f'selective_scan: empty sequence, u has shape {tuple(u.shape)} '
                         f'(L must be >= 1; layout={layout!r})')
    if delta.shape != u.shape:
        raise ValueError(f'selective_scan: delta shape {tuple(delta.shape)} != '
                         f'u shape {tuple(u.shape)}')
    if A.is_complex():
        raise TypeError('selective_scan: complex A is not supported (A must be real, (dim, N))')
    if A.dim() != 2 or A.shape[0] != dim:
        raise ValueError(f'selective_scan: A must be (dim={dim}, N), got shape {tuple(A.shape)}')
    N = A.shape[1]
    bc_shape = '(batch, L, G, N) or (batch, L, N)' if time_major else \
        '(batch, G, N, L) or (batch, N, L)'
    BC = []
    for name, t in (('B', B), ('C', C)):
        if t.is_complex():
            raise TypeError(f'selective_scan: complex {name} is not supported')
        if t.dim() == 3:
            t = t.unsqueeze(2 if time_major else 1)
        ok = t.dim() == 4 and t.shape[0] == batch and (
            (t.shape[1] == L and t.shape[3] == N) if time_major else
            (t.shape[2] == N and t.shape[3] == L))
        if not ok:
            raise ValueError(f'selective_scan: {name} must be {bc_shape} with batch={batch}, '
                             f'N={N}, L={L} (layout={layout!r}), got shape {tuple(t.shape)}')
        BC.append(t)
    B, C = BC
    G_axis = 2 if time_major else 1
    if B.shape[G_axis] != C.shape[G_axis]:
        raise ValueError(f'selective_scan: B and C have different group counts: '
                         f'{tuple(B.shape)} vs {tuple(C.shape)}')
    G = B.shape[G_axis]
    if G == 0 or dim % G != 0:
        raise ValueError(f'selective_scan: dim={dim} is not divisible by the group count '
                         f'G={G} of B/C')
    for name, t in (('D', D), ('delta_bias', delta_bias)):
        if t is not None and tuple(t.shape) != (dim, ):
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
                   return_last_state=False, backend=None, layout='channel_major'):
    """Selective scan with the semantics of mamba_ssm's ``selective_scan_fn``.

    ``h_t = exp(delta_t A) h_{t-1} + delta_t B_t u_t``, ``y_t = C_t h_t + D u_t``,
    ``out = y * silu(z)`` (with ``delta <- softplus(delta + delta_bias)`` when asked).

    Args:
        u (Tensor): input, (batch, dim, L), or (batch, L, dim) for ``layout='time_major'``.
        delta (Tensor): time steps, same shape as ``u``.
        A (Tensor): state matrix (diagonal), (dim, N), real.
        B (Tensor): input projection, (batch, G, N, L) or (batch, N, L);
            time-major (batch, L, G, N) or (batch, L, N). ``G`` divides ``dim``:
            channel ``d`` uses group ``d // (dim // G)``.
        C (Tensor): output projection, same layout as ``B``.
        D (Tensor, optional): skip connection, (dim,).
        z (Tensor, optional): gate, shape of ``u``; output is ``y * silu(z)``.
        delta_bias (Tensor, optional): (dim,), added to ``delta``.
        delta_softplus (bool): apply softplus to ``delta + delta_bias``.
        return_last_state (bool): also return the final state (batch, dim, N),
            float32 (float64 for float64 inputs).
        backend (str, optional): a registered backend ('reference', 'torch', 'cpu',
            'triton', see :mod:`vmamba_mm.ops.backend`). ``None``: the environment
            variable ``VMAMBA_MM_SCAN_BACKEND`` if set, else 'triton' for CUDA
            tensors, 'cpu' (the C++ kernel; 'torch' with a warning where it
            cannot be built) for CPU tensors and 'torch' otherwise.
        layout (str): 'channel_major' (mamba_ssm's) or 'time_major'. Inputs may
            have any strides.

    Returns:
        Tensor in ``u``'s shape (contiguous) and dtype, and the last state if asked.
    """
    B, C = _check(u, delta, A, B, C, D, z, delta_bias, layout)
    impl = resolve('selective_scan', backend, (u, delta, A, B, C, D, z, delta_bias), layout)
    save = torch.is_grad_enabled() and any(
        t is not None and t.requires_grad for t in (u, delta, A, B, C, D, z, delta_bias))
    out, last, _, _ = selective_scan_fwd(u, delta, A, B, C, D, z, delta_bias,
                                         bool(delta_softplus), layout == 'time_major',
                                         impl.name, save)
    return (out, last) if return_last_state else out
