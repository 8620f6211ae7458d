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


def check_drop_path_rate(owner, rate):
    """Raise ValueError unless ``0 <= rate < 1`` (1 drops every path: NaN in training)."""
    if isinstance(rate, bool) or not isinstance(rate, (int, float)) or not 0 <= rate < 1:
        raise ValueError(f'{owner}: drop_path_rate must be a number in [0, 1), got {rate!r}')


def check_input_dtype(owner, x, weight):
    """Raise TypeError for non-floating input, or (outside autocast) input whose
    dtype differs from ``weight``'s."""
    if not x.is_floating_point():
        raise TypeError(f'{owner}: input must be floating point, got {x.dtype} '
                        '(convert images with .float() and normalise them)')
    if x.dtype != weight.dtype and not torch.is_autocast_enabled(x.device.type):
        raise TypeError(f'{owner}: input dtype {x.dtype} differs from the weights\' '
                        f'{weight.dtype}; cast the input (x.to({weight.dtype})) or the model '
                        '(model.to(dtype)), or run under torch.autocast')


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
