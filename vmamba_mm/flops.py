"""FLOP counting for models that use vmamba_mm's operators.

mmengine's :class:`~mmengine.analysis.FlopAnalyzer` (a port of fvcore's jit-tracing
counter; one multiply-add = one FLOP) counts convolutions, linear layers, einsums,
matmuls, norms, interpolation and pooling. The selective scan is a registered
operator, so the traced graph holds one ``vmamba_mm::selective_scan_fwd`` node per
scan, counted by :func:`scan_flop_jit` with VMamba's formula
(:func:`vmamba_mm.ops.selective_scan_flops`; the same formula is registered for
``torch.utils.flop_counter.FlopCounterMode``), for ``u`` of ``batch x dim x L``
elements and ``N = d_state``::

    FLOPs = 9 * batch * dim * N * L      # discretisation exp(delta*A), delta*B*u,
                                         # the recurrence h = dA*h + dBu, and y = C.h
          + batch * dim * L   if D given # skip term D * u
          + batch * dim * L   if z given # gate y * silu(z)

Cross-scan / cross-merge (``vmamba_mm::cross_scan`` / ``cross_merge`` nodes) are
data movement (plus the merge's additions, which fvcore-style counters ignore like
every elementwise add): 0 FLOPs, as in VMamba's own counts. Elementwise
activations (SiLU, GELU, exp, softplus) count 0, also as there.
"""
import torch
from torch import nn

from .ops import selective_scan_flops

SCAN_OP_NAME = 'vmamba_mm::selective_scan_fwd'


def scan_flop_jit(inputs, outputs):
    """FlopAnalyzer handle for :data:`SCAN_OP_NAME` nodes (the operator's arguments:
    u, delta, A, B, C, D?, z?, delta_bias?, delta_softplus, time_major, ...)."""
    u_shape = inputs[0].type().sizes()
    d_state = inputs[2].type().sizes()[1]
    time_major = bool(inputs[9].toIValue())
    batch, a, b = u_shape
    dim, length = (b, a) if time_major else (a, b)
    present = [not isinstance(inputs[i].type(), torch._C.NoneType) for i in (5, 6)]
    return selective_scan_flops(batch, dim, length, d_state, *present)


def count_flops(model, inputs):
    """Count FLOPs and parameters of ``model(*inputs)`` (eval mode, no grad).

    Args:
        model (nn.Module): the model; its forward takes ``inputs`` positionally.
        inputs (tuple): the forward's arguments (tensors).

    Returns:
        dict: ``flops`` (int, total), ``params`` (int), ``scan_flops`` (int, the
        selective scans' share), ``by_module`` (dict top-level submodule -> FLOPs,
        submodules with none left out),
        ``by_operator`` (dict op -> FLOPs), ``uncounted_ops`` (dict op -> number of
        occurrences of ops counted as 0 FLOPs).
    """
    from mmengine.analysis import FlopAnalyzer, parameter_count
    if not isinstance(model, nn.Module):
        raise TypeError(f'count_flops: model must be an nn.Module, got {type(model).__name__}')
    if not isinstance(inputs, tuple):
        raise TypeError(f'count_flops: inputs must be a tuple of tensors, got {type(inputs).__name__}')
    was_training = model.training
    model.eval()
    try:
        with torch.no_grad():
            analyzer = FlopAnalyzer(model, inputs)
            analyzer.set_op_handle(**{SCAN_OP_NAME: scan_flop_jit})
            analyzer.unsupported_ops_warnings(False)
            analyzer.uncalled_modules_warnings(False)
            analyzer.tracer_warnings('none')
            flops = analyzer.total()
            by_operator = dict(analyzer.by_operator())
            by_module = {name: analyzer.total(name) for name, _ in model.named_children()}
            by_module = {name: f for name, f in by_module.items() if f}
            uncounted = dict(analyzer.unsupported_ops())
    finally:
        model.train(was_training)
    return dict(flops=int(flops), params=int(parameter_count(model)['']),
                scan_flops=int(by_operator.get(SCAN_OP_NAME.split('::')[1], 0)),
                by_module=by_module, by_operator=by_operator, uncounted_ops=uncounted)


# Default input (height, width) per task library, as the papers count them:
# classification 224x224, Mask R-CNN 1280x800 (VMamba's get_flops: input (3, 1280, 800)),
# UperNet 512x2048.
DEFAULT_SHAPES = {'mmpretrain': (224, 224), 'mmdet': (1280, 800), 'mmseg': (512, 2048)}


def _dummy_data_samples(scope, height, width):
    """Data samples the 'tensor' forward needs (mmdet's RPN reads image shapes)."""
    if scope != 'mmdet':
        return None
    from mmdet.structures import DetDataSample
    sample = DetDataSample(metainfo=dict(
        img_shape=(height, width), ori_shape=(height, width), pad_shape=(height, width),
        batch_input_shape=(height, width), scale_factor=(1.0, 1.0)))
    return [sample]


def config_flops(cfg, shape=None):
    """FLOPs / parameters of the model of an mmdet / mmseg / mmpretrain config.

    The model is built from ``cfg.model`` in the config's ``default_scope`` and run in
    'tensor' mode on one dummy image (already normalised; the data preprocessor is
    skipped): backbone + neck + heads as each library defines 'tensor' mode
    (mmseg: backbone, neck, decode head; mmdet: backbone, neck, RPN with its test-time
    proposals, RoI heads; mmpretrain: backbone, neck, head).

    Args:
        cfg (mmengine.Config | str): the config or its path.
        shape (tuple[int, int], optional): input (height, width); defaults to
            :data:`DEFAULT_SHAPES` of the config's scope.

    Returns:
        dict: :func:`count_flops`'s result plus ``scope`` and ``shape``.
    """
    import importlib

    from mmengine.config import Config
    from mmengine.registry import init_default_scope
    if isinstance(cfg, str):
        cfg = Config.fromfile(cfg)
    scope = cfg.get('default_scope', None)
    if scope not in DEFAULT_SHAPES:
        raise ValueError(f'config_flops: default_scope must be one of {sorted(DEFAULT_SHAPES)}, '
                         f'got {scope!r} (inherit the task library\'s default_runtime)')
    shape = tuple(shape) if shape is not None else DEFAULT_SHAPES[scope]
    if len(shape) != 2 or not all(isinstance(s, int) and s > 0 for s in shape):
        raise ValueError(f'config_flops: shape must be (height, width) positive ints, got {shape}')
    init_default_scope(scope)
    registry = importlib.import_module(f'{scope}.registry').MODELS
    model_cfg = cfg.model.copy()
    if model_cfg.get('backbone', {}).get('init_cfg') is not None:
        model_cfg.backbone.init_cfg = None  # weights do not change the count; no download
    model = registry.build(model_cfg)
    inputs = torch.randn(1, 3, *shape)
    samples = _dummy_data_samples(scope, *shape)
    forward = model.forward
    model.forward = lambda x: forward(x, samples, mode='tensor')
    try:
        result = count_flops(model, (inputs, ))
    finally:
        del model.forward
    result.update(scope=scope, shape=shape)
    return result
