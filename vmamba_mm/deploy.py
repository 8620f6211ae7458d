"""ONNX export of our mmpretrain / mmseg / mmdet models, and its check with onnxruntime.

The route: ``torch.export`` traces the model (the scan operators are single nodes
``vmamba_mm::selective_scan_fwd``, ``vmamba_mm::cross_scan``,
``vmamba_mm::cross_merge``), and ``torch.onnx.export`` (dynamo, opset >= 18)
translates the program to ONNX, its decomposition pass lowering those nodes to
standard operations with :func:`vmamba_mm.ops.export.decomposition_table`
(:func:`~vmamba_mm.ops.export.onnx_lowering`). The exporter's graph optimiser
is off: it takes minutes on the lowered graphs, and onnxruntime optimises the
graph itself when it loads it.

What is exported (the input is the image as the config's data preprocessor
hands it to the model: normalised, RGB/BGR as configured, padded):

- mmpretrain ``ImageClassifier``: image -> class logits (``'tensor'`` mode);
- mmseg ``EncoderDecoder`` (e.g. UperNet): image -> segmentation logits at the
  decode head's resolution (``'tensor'`` mode, the whole segmentor);
- mmdet detectors (e.g. Mask R-CNN): image -> backbone + neck features
  (``extract_feat``); RoI heads and NMS are left to mmdeploy.

onnx, onnxscript and onnxruntime are imported only by the functions that need
them (``pip install vmamba_mm[deploy]``).
"""
import time

import torch
import torch.nn as nn

from .models.checkpoint import load_model_checkpoint
from .runner import register_scope, task_scope

# Below it the exporter down-converts (e.g. ReduceProd attributes onnxruntime rejects).
MIN_OPSET = 18
# Relative error max|onnxruntime - PyTorch| / max|PyTorch| allowed per output (float32).
VERIFY_RTOL = 1e-4
INPUT_NAME = 'input'
# --dynamic: H and W are multiples of this (the stride of the deepest feature map;
# mmdet / mmseg data preprocessors pad to it).
DYNAMIC_MULTIPLE = 32


class ExportError(RuntimeError):
    """A model, checkpoint or option that the export does not support."""


class TensorOutputs(nn.Module):
    """The exported function of a task model: image -> tuple of tensors.

    Args:
        model (nn.Module): an mmpretrain ``ImageClassifier``, mmseg
            ``EncoderDecoder`` or mmdet detector (``BaseDetector``).
        scope (str): 'mmpretrain', 'mmseg' or 'mmdet'.
    """

    def __init__(self, model, scope):
        super().__init__()
        self.model = model
        self.scope = scope

    def forward(self, inputs):
        if self.scope == 'mmdet':
            return tuple(self.model.extract_feat(inputs))
        return (self.model(inputs, mode='tensor'), )


def _supported_types(scope):
    if scope == 'mmpretrain':
        from mmpretrain.models import ImageClassifier
        return ImageClassifier, 'ImageClassifier'
    if scope == 'mmseg':
        from mmseg.models.segmentors import EncoderDecoder
        return EncoderDecoder, 'EncoderDecoder (e.g. UperNet)'
    from mmdet.models.detectors import BaseDetector
    return BaseDetector, 'a detector (BaseDetector)'


def output_names(scope, num_outputs):
    """Names of the ONNX outputs: 'logits', 'seg_logits' or 'feat0'..'featK'."""
    if scope == 'mmpretrain':
        return ['logits']
    if scope == 'mmseg':
        return ['seg_logits']
    return [f'feat{i}' for i in range(num_outputs)]


def build_model(cfg, checkpoint=None):
    """The config's model, in eval mode without gradients, wrapped for export.

    Without ``checkpoint`` the model is initialised as by training
    (``init_weights``: a backbone ``init_cfg`` of type 'Pretrained' is loaded);
    with it, the checkpoint must hold this whole model (:func:`load_model_checkpoint`).

    Returns:
        tuple[TensorOutputs, str]: the wrapped model and the task scope.

    Raises:
        ExportError: for a model type the export does not cover.
    """
    scope = task_scope(cfg)
    register_scope(scope)
    from mmengine.registry import DefaultScope
    registry = __import__(f'{scope}.registry', fromlist=['MODELS']).MODELS
    with DefaultScope.overwrite_default_scope(scope):
        model = registry.build(cfg.model)
    cls, what = _supported_types(scope)
    if not isinstance(model, cls):
        raise ExportError(f'{scope} model {type(model).__name__} is not supported: the export '
                          f'covers {what} models of {scope}')
    if checkpoint is None:
        model.init_weights()
    else:
        load_model_checkpoint(model, checkpoint)
    model.eval().requires_grad_(False)
    return TensorOutputs(model, scope), scope


def check_shape(shape, dynamic):
    """Validate ``--shape H W`` (positive; multiples of 32 with ``dynamic``)."""
    if len(shape) != 2 or any(not isinstance(s, int) or s < 1 for s in shape):
        raise ExportError(f'shape must be two positive ints (H, W), got {shape}')
    if dynamic and any(s % DYNAMIC_MULTIPLE for s in shape):
        raise ExportError(f'a dynamic export takes H and W multiples of {DYNAMIC_MULTIPLE}; '
                          f'the example shape {tuple(shape)} is not')


def check_dynamic(module):
    """Raise for modules that cannot be exported with symbolic H, W: adaptive
    average pooling to a size other than 1 (e.g. UperNet's pyramid pooling
    module), whose decomposition needs the input size as a number."""
    for name, m in module.named_modules():
        if isinstance(m, nn.AdaptiveAvgPool2d):
            size = m.output_size if isinstance(m.output_size, tuple) else (m.output_size, ) * 2
            if any(s not in (1, None) for s in size):
                raise ExportError(
                    f'--dynamic is not supported for this model: {name} is adaptive average '
                    f'pooling to {m.output_size} (e.g. UperNet\'s pyramid pooling), which '
                    f'exports only for a fixed input size; export with a static --shape')


def check_traced_size_independent(ep, module, shape, names):
    """Run the traced program at another size (H + 32, W + 64) against ``module``.

    A model whose code branches on the input size (e.g. Vim skips resizing its
    position embedding when the patch grid equals ``img_size``) is traced for
    the example size only; this catches it before an ONNX file is written.
    """
    other = (shape[0] + DYNAMIC_MULTIPLE, shape[1] + 2 * DYNAMIC_MULTIPLE)
    x = example_input(other, seed=1)
    hint = ('export with a static --shape, or with --dynamic from another example size '
            '(e.g. not the size a Vim position embedding is stored for)')
    with torch.no_grad():
        try:
            got = _as_tuple(ep.module()(x))
        except Exception as e:  # noqa: BLE001  (any failure means: not size-independent)
            raise ExportError(f'--dynamic: the model traced at {shape} does not run at '
                              f'{other} ({type(e).__name__}: {str(e)[:300]}); {hint}') from e
        errors = relative_errors(got, _as_tuple(module(x)), names)
    bad = {k: v for k, v in errors.items() if not v <= VERIFY_RTOL}
    if bad:
        raise ExportError(f'--dynamic: the model traced at {shape} differs from PyTorch at '
                          f'{other} (relative errors {bad}); {hint}')


def example_input(shape, seed=0):
    """A random normalised image (1, 3, H, W), the same for export and check."""
    gen = torch.Generator().manual_seed(seed)
    return torch.randn(1, 3, *shape, generator=gen)


def _as_tuple(out):
    return tuple(out) if isinstance(out, (tuple, list)) else (out, )


def export_onnx(module, shape, out, dynamic=False, opset=MIN_OPSET):
    """Export ``module`` (image -> tuple of tensors) to the ONNX file ``out``.

    Args:
        module (TensorOutputs): from :func:`build_model`.
        shape (tuple[int]): (H, W) of the example (and, if not ``dynamic``, the only) input.
        out (str): the .onnx file to write.
        dynamic (bool): keep H and W symbolic (any multiples of 32 at run time).
        opset (int): ONNX opset, at least ``MIN_OPSET``.

    Returns:
        dict: ``export_s`` (seconds for torch.export), ``onnx_s`` (for the
        lowering and the ONNX translation), ``nodes``
        (count of graph nodes by op type), ``num_nodes``, ``outputs`` (names).
    """
    import torch.fx.experimental._config as fx_config

    from .ops.export import onnx_lowering
    if opset < MIN_OPSET:
        raise ExportError(f'opset {opset} is not supported: use {MIN_OPSET} or newer (older '
                          f'opsets go through a down-conversion onnxruntime rejects)')
    check_shape(shape, dynamic)
    if dynamic:
        check_dynamic(module)
    try:
        import onnxscript  # noqa: F401  (the dynamo exporter needs it)
    except ImportError as e:
        raise ImportError(f'ONNX export needs onnx and onnxscript ({e}); '
                          f'pip install "vmamba_mm[deploy]"') from e
    x = example_input(shape)
    dynamic_shapes = None
    if dynamic:
        h = torch.export.Dim('h', min=1, max=4096 // DYNAMIC_MULTIPLE)
        w = torch.export.Dim('w', min=1, max=4096 // DYNAMIC_MULTIPLE)
        dynamic_shapes = ({2: DYNAMIC_MULTIPLE * h, 3: DYNAMIC_MULTIPLE * w}, )
    t0 = time.perf_counter()
    # Sizes reasoned about as >= 2 (no guard on a size being 1; nothing in the
    # exported graphs depends on it) so symbolic sizes stay symbolic.
    with torch.no_grad(), fx_config.patch(backed_size_oblivious=True):
        ep = torch.export.export(module, (x, ), dynamic_shapes=dynamic_shapes, strict=False)
    t1 = time.perf_counter()
    names = output_names(module.scope, len(ep.graph_signature.user_outputs))
    if dynamic:
        check_traced_size_independent(ep, module, shape, names)
    with onnx_lowering():
        program = torch.onnx.export(ep, (x, ), input_names=[INPUT_NAME], output_names=names,
                                    opset_version=opset, dynamo=True, optimize=False,
                                    verbose=False)
    program.save(out)
    t2 = time.perf_counter()
    nodes = count_nodes(out)
    return dict(export_s=t1 - t0, onnx_s=t2 - t1, nodes=nodes, num_nodes=sum(nodes.values()),
                outputs=names)


def count_nodes(path):
    """{op type: count} of the main graph of an ONNX file, most frequent first."""
    import onnx
    from collections import Counter
    model = onnx.load(path, load_external_data=False)
    return dict(Counter(n.op_type for n in model.graph.node).most_common())


def relative_errors(got, want, names):
    """{name: max|got - want| / max|want|} per output; shapes must agree."""
    errors = {}
    for name, g, w in zip(names, got, want):
        g, w = torch.as_tensor(g).double(), w.detach().double()
        if tuple(g.shape) != tuple(w.shape):
            raise ExportError(f'output {name}: onnxruntime shape {tuple(g.shape)} != '
                              f'PyTorch shape {tuple(w.shape)}')
        scale = w.abs().max().item()
        errors[name] = (g - w).abs().max().item() / (scale if scale > 0 else 1.0)
    return errors


def session_options(threads=None):
    """onnxruntime session options: errors only in its log (it warns about every
    node it cannot constant-fold), ``threads`` intra-op threads if given."""
    import onnxruntime as ort
    opts = ort.SessionOptions()
    opts.log_severity_level = 3
    if threads:
        opts.intra_op_num_threads = threads
        opts.inter_op_num_threads = 1
    return opts


def verify_onnx(path, module, shape, seed=0):
    """Run the ONNX file with onnxruntime (CPU) and ``module`` on the same random image.

    Returns:
        dict: {output name: relative error} (see :func:`relative_errors`).
    """
    try:
        import onnxruntime as ort
    except ImportError as e:
        raise ImportError(f'--verify needs onnxruntime ({e}); pip install "vmamba_mm[deploy]"'
                          ) from e
    x = example_input(shape, seed)
    with torch.no_grad():
        want = _as_tuple(module(x))
    session = ort.InferenceSession(path, session_options(), providers=['CPUExecutionProvider'])
    got = session.run(None, {INPUT_NAME: x.numpy()})
    if len(got) != len(want):
        raise ExportError(f'onnxruntime gives {len(got)} outputs, PyTorch {len(want)}')
    return relative_errors(got, want, [o.name for o in session.get_outputs()])
