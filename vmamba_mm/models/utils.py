"""Small helpers shared by the backbones (torch only: no mmcv)."""
import platform

import torch
import torch.nn as nn
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


def check_backend_name(model, arg, name, op):
    """Raise unless ``name`` is None or a backend registered for operator ``op``
    (a config typo fails when the model is built, not at its first forward)."""
    from ..ops import backends
    if name is not None and name not in backends(op):
        raise ValueError(f'{model}: unknown {arg} {name!r}; choose one of '
                         f'{sorted(backends(op))} or None (environment variable / device default)')


class DropPath(nn.Module):
    """Stochastic depth: in training, zero the whole residual branch of each
    sample with probability ``drop_prob`` and scale the kept ones by
    ``1 / (1 - drop_prob)``; identity in eval mode.

    Args:
        drop_prob (float): probability of dropping a sample's branch, in [0, 1).
    """

    def __init__(self, drop_prob=0.1):
        super().__init__()
        if not 0 <= drop_prob < 1:
            raise ValueError(f'DropPath: drop_prob must be in [0, 1), got {drop_prob}')
        self.drop_prob = float(drop_prob)

    def forward(self, x):
        if not self.training or self.drop_prob == 0:
            return x
        keep = 1 - self.drop_prob
        mask = x.new_empty((x.shape[0],) + (1,) * (x.dim() - 1)).bernoulli_(keep)
        return x * (mask / keep)

    def extra_repr(self):
        return f'drop_prob={self.drop_prob}'


_NORMS = {'BN': nn.BatchNorm2d, 'BN2d': nn.BatchNorm2d, 'SyncBN': nn.SyncBatchNorm,
          'GN': nn.GroupNorm}


def build_norm_layer(cfg, num_features):
    """A 2-D feature-map norm from an OpenMMLab-style config.

    Args:
        cfg (dict): ``type`` ('BN', 'BN2d', 'SyncBN' or 'GN'), optional
            ``requires_grad`` (default True) and the layer's keyword arguments
            (``eps``, ``momentum``; ``num_groups`` for GN).
        num_features (int): channels.

    Returns:
        nn.Module: the norm layer.
    """
    if not isinstance(cfg, dict) or 'type' not in cfg:
        raise TypeError(f'norm_cfg must be a dict with a "type" key, got {cfg!r}')
    kwargs = dict(cfg)
    norm_type = kwargs.pop('type')
    requires_grad = kwargs.pop('requires_grad', True)
    if norm_type not in _NORMS:
        raise ValueError(f'norm_cfg: unknown norm type {norm_type!r}; choose one of '
                         f'{sorted(_NORMS)}')
    if norm_type == 'GN':
        if 'num_groups' not in kwargs:
            raise ValueError('norm_cfg: GN needs num_groups')
        layer = nn.GroupNorm(num_channels=num_features, **kwargs)
    else:
        layer = _NORMS[norm_type](num_features, **kwargs)
    for p in layer.parameters():
        p.requires_grad = requires_grad
    return layer
