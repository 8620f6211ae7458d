"""Cross-scan / cross-merge as registered PyTorch operators (``torch.ops.vmamba_mm``).

``vmamba_mm::cross_scan(x, time_major, backend)`` and
``vmamba_mm::cross_merge(ys, time_major, backend)``: each has a fake (meta)
implementation, and each is the other's backward (the merge is the scan's
adjoint), so double backward works too. A backend module implements
``cross_scan_fwd(x, time_major)`` and ``cross_merge_fwd(ys, time_major)``
(contiguous outputs; see ``docs/ops.md``).

Layouts: channel-major x (B, C, H, W) -> (B, 4, C, H*W), merge (B, 4, C, H, W)
-> (B, C, H, W); time-major x (B, H, W, C) -> (B, H*W, 4, C), merge (B, H, W, 4, C)
-> (B, H, W, C). The four orders: row-major, column-major, both reversed.
"""
import torch
from torch import Tensor

from ..backend import backends, resolve


def _module(backend):
    return backends('cross_scan')[backend].implementation('cross_scan')


def _scan_shape(x_shape, time_major):
    if time_major:
        B, H, W, C = x_shape
        return (B, H * W, 4, C)
    B, C, H, W = x_shape
    return (B, 4, C, H * W)


def _merge_shape(ys_shape, time_major):
    if time_major:
        B, H, W, _, C = ys_shape
        return (B, H, W, C)
    B, _, C, H, W = ys_shape
    return (B, C, H, W)


def _merge_input_shape(x_shape, time_major):
    """The shape in which the merge takes the scan's output of an ``x_shape`` map."""
    if time_major:
        B, H, W, C = x_shape
        return (B, H, W, 4, C)
    B, C, H, W = x_shape
    return (B, 4, C, H, W)


@torch.library.custom_op('vmamba_mm::cross_scan', mutates_args=())
def cross_scan_op(x: Tensor, time_major: bool, backend: str) -> Tensor:
    return _module(backend).cross_scan_fwd(x, time_major)


@cross_scan_op.register_fake
def _(x, time_major, backend):
    return x.new_empty(_scan_shape(x.shape, time_major))


@torch.library.custom_op('vmamba_mm::cross_merge', mutates_args=())
def cross_merge_op(ys: Tensor, time_major: bool, backend: str) -> Tensor:
    return _module(backend).cross_merge_fwd(ys, time_major)


@cross_merge_op.register_fake
def _(ys, time_major, backend):
    return ys.new_empty(_merge_shape(ys.shape, time_major))


def _setup_scan(ctx, inputs, output):
    x, time_major, backend = inputs
    ctx.flags = (x.shape, time_major, backend)


def _scan_backward(ctx, grad):
    x_shape, time_major, backend = ctx.flags
    grad = grad.reshape(_merge_input_shape(x_shape, time_major))
    return cross_merge_op(grad, time_major, backend), None, None


def _setup_merge(ctx, inputs, output):
    ys, time_major, backend = inputs
    ctx.flags = (ys.shape, time_major, backend)


def _merge_backward(ctx, grad):
    ys_shape, time_major, backend = ctx.flags
    return cross_scan_op(grad, time_major, backend).reshape(ys_shape), None, None


cross_scan_op.register_autograd(_scan_backward, setup_context=_setup_scan)
cross_merge_op.register_autograd(_merge_backward, setup_context=_setup_merge)


def _check_float(fn, name, t):
    if not isinstance(t, torch.Tensor):
        raise TypeError(f'{fn}: {name} must be a Tensor, got {type(t).__name__}')
    if not t.is_floating_point():
        raise TypeError(f'{fn}: {name} has dtype {t.dtype}; expected a floating dtype')


def cross_scan(x, backend=None, layout='channel_major'):
    """Unfold a feature map into VMamba's four scan orders.

    Args:
        x (Tensor): (B, C, H, W); time-major layout: (B, H, W, C) (channels last).
        backend (str, optional): a registered backend ('reference', 'torch',
            'triton'); ``None``: the environment variable
            ``VMAMBA_MM_CROSS_SCAN_BACKEND`` if set, else 'triton' for CUDA tensors
            and 'torch' otherwise.
        layout (str): 'channel_major' or 'time_major'.

    Returns:
        Tensor: (B, 4, C, H * W), or time-major (B, H * W, 4, C), contiguous: the
        orders row-major, column-major, row-major reversed, column-major reversed.
    """
    _check_float('cross_scan', 'x', x)
    if x.dim() != 4:
        shape = '(B, H, W, C)' if layout == 'time_major' else '(B, C, H, W)'
        raise ValueError(f'cross_scan: x must be {shape} (layout={layout!r}), '
                         f'got shape {tuple(x.shape)}')
    impl = resolve('cross_scan', backend, (x, ), layout)
    return cross_scan_op(x, layout == 'time_major', impl.name)


def cross_merge(ys, backend=None, layout='channel_major'):
    """Fold the four scan orders back onto the map and sum them (adjoint of :func:`cross_scan`).

    Args:
        ys (Tensor): (B, 4, C, H, W): ``ys[:, k]`` is direction k's sequence (in
            its scan order) viewed as (H, W); time-major: (B, H, W, 4, C), the
            (B, H * W, 4, C) sequences viewed.
        backend (str, optional): as for :func:`cross_scan`.
        layout (str): 'channel_major' or 'time_major'.

    Returns:
        Tensor: (B, C, H, W), or time-major (B, H, W, C), contiguous.
    """
    _check_float('cross_merge', 'ys', ys)
    k_axis = 3 if layout == 'time_major' else 1
    if ys.dim() != 5 or ys.shape[k_axis] != 4:
        shape = '(B, H, W, 4, C)' if layout == 'time_major' else '(B, 4, C, H, W)'
        raise ValueError(f'cross_merge: ys must be {shape} (K = 4 directions, '
                         f'layout={layout!r}), got shape {tuple(ys.shape)}')
    impl = resolve('cross_scan', backend, (ys, ), layout)
    return cross_merge_op(ys, layout == 'time_major', impl.name)
