"""Small helpers shared by the backbones."""
import platform

import torch
import torch.nn.functional as F

# The fused oneDNN linear is measured and tested on x86-64 only.
_ONEDNN_LINEAR = (platform.machine().lower() in ('x86_64', 'amd64')
                  and hasattr(torch.ops.mkldnn, '_linear_pointwise')
                  and torch.backends.mkldnn.is_available())


def at_least_fp32(t):
    """``t`` in float32, or unchanged if its dtype is already wider (float64).

    The SSM parameters (A, D, dt bias) enter the scan, and Vim's residual stream
    is kept, in at least float32 whatever the model / autocast dtype.
    """
    return t.to(torch.promote_types(t.dtype, torch.float32))


def _onednn_linear_ok(x, weight, bias):
    """Whether :func:`linear` may take its oneDNN inference path for these tensors."""
    if not _ONEDNN_LINEAR:
        return False
    if torch.jit.is_tracing() or torch.compiler.is_compiling() or torch.is_autocast_enabled('cpu'):
        return False  # FLOP counters, exporters and autocast see the plain ops
    tensors = (x, weight) if bias is None else (x, weight, bias)
    if any(t.device.type != 'cpu' or t.dtype != torch.float32 for t in tensors):
        return False
    return not (torch.is_grad_enabled() and any(t.requires_grad for t in tensors))


def linear(x, weight, bias=None, gelu=False):
    """``F.linear`` over the last dim of ``x``, optionally followed by exact GELU.

    For float32 inference on an x86-64 CPU (no tensor needs a gradient, no
    autocast, not traced) this is one oneDNN call with the bias and GELU fused, measured about
    20% faster than MKL's ``F.linear`` + ``F.gelu`` on the VMamba-T MLP shapes
    (``tools/benchmark_backbones.py``); everywhere else it is the plain ops. Both
    give the same result to float32 rounding (tested).
    """
    if _onednn_linear_ok(x, weight, bias):
        return torch.ops.mkldnn._linear_pointwise(x.contiguous(), weight, bias,
                                                  'gelu' if gelu else 'none', [],
                                                  'none' if gelu else '')
    y = F.linear(x, weight, bias)
    return F.gelu(y) if gelu else y


def check_backend_name(model, arg, name, op):
    """Raise unless ``name`` is None or a backend registered for operator ``op``
    (a config typo fails when the model is built, not at its first forward)."""
    from ..ops import backends
    if name is not None and name not in backends(op):
        raise ValueError(f'{model}: unknown {arg} {name!r}; choose one of '
                         f'{sorted(backends(op))} or None (environment variable / device default)')
