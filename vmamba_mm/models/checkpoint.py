"""Loud loading of checkpoints: official ones into our backbones, our own into whole models.

The official releases wrap weights differently: classification checkpoints are
``{'model': state_dict}``, detection / segmentation ones ``{'state_dict': ...}``
with a ``backbone.`` prefix. :func:`load_pretrained` unwraps both, converts key
names with a backbone-specific function, and then either loads or raises an error
that names the offending keys. Missing and unexpected keys are always logged.
:func:`load_model_checkpoint` loads a whole-model checkpoint (tools/train.py's
output) strictly, e.g. for the ONNX export.
"""
import torch
from mmengine.logging import MMLogger, print_log

# Fewer matched parameter tensors than this fraction of the model's = wrong checkpoint.
MIN_MATCHED_FRACTION = 0.5


def read_checkpoint(filename):
    """Load a checkpoint file/URL and return its state dict.

    The dict under 'state_dict', 'model' or 'module' (whichever comes first) is
    unwrapped and a DataParallel ``module.`` prefix removed; keys are kept as
    they are otherwise.
    """
    # mmengine.runner pulls in its hooks (OpenCV): imported when a checkpoint is read.
    from mmengine.runner.checkpoint import CheckpointLoader
    try:
        ckpt = CheckpointLoader.load_checkpoint(filename, map_location='cpu')
    except FileNotFoundError:
        raise
    except Exception as e:  # corrupt file, not a torch pickle, ...
        raise RuntimeError(f'cannot read checkpoint {filename!r}: {type(e).__name__}: {e}') from e
    if not isinstance(ckpt, dict):
        raise TypeError(f'checkpoint {filename!r} holds a {type(ckpt).__name__}, expected a dict')
    for key in ('state_dict', 'model', 'module'):
        if key in ckpt and isinstance(ckpt[key], dict):
            ckpt = ckpt[key]
            break
    return {k[len('module.'):] if k.startswith('module.') else k: v for k, v in ckpt.items()}


def read_state_dict(filename):
    """Load a checkpoint file/URL and return its backbone state dict
    (:func:`read_checkpoint`, then the ``backbone.`` keys of a whole-model one)."""
    ckpt = read_checkpoint(filename)
    if any(k.startswith('backbone.') for k in ckpt):
        ckpt = {k[len('backbone.'):]: v for k, v in ckpt.items() if k.startswith('backbone.')}
    return ckpt


def load_model_checkpoint(model, filename):
    """Load a checkpoint of the whole ``model`` (e.g. saved by tools/train.py) strictly.

    Raises:
        RuntimeError: naming the keys, if any key of the model is missing from the
            checkpoint, any key of the checkpoint is not in the model, or a shape
            differs.
    """
    state = read_checkpoint(filename)
    own = model.state_dict()
    mismatched = [f'{k}: checkpoint {tuple(v.shape)} vs model {tuple(own[k].shape)}'
                  for k, v in state.items()
                  if k in own and isinstance(v, torch.Tensor) and v.shape != own[k].shape]
    missing = [k for k in own if k not in state]
    unexpected = [k for k in state if k not in own]
    if mismatched or missing or unexpected:
        parts = [f'{len(keys)} {what} keys, e.g. {keys[:10]}'
                 for what, keys in (('shape-mismatched', mismatched), ('missing', missing),
                                    ('unexpected', unexpected)) if keys]
        raise RuntimeError(
            f'checkpoint {filename!r} does not fit the {type(model).__name__} of this config: '
            + '; '.join(parts) + '. It must hold this config\'s whole model (as saved by '
            'tools/train.py); a backbone checkpoint (e.g. an official release) goes into '
            'model.backbone.init_cfg=dict(type=\'Pretrained\', checkpoint=...) instead')
    model.load_state_dict(state)
    print_log(f'loaded all {len(own)} tensors of {type(model).__name__} from {filename}',
              logger=MMLogger.get_current_instance())


def load_pretrained(model, filename, convert=None, logger=None):
    """Load ``filename`` into ``model`` after ``convert(state_dict, model)``.

    Raises:
        RuntimeError: if a matching key has a different shape, or fewer than
            ``MIN_MATCHED_FRACTION`` of the model's tensors are found.
    """
    logger = logger or MMLogger.get_current_instance()
    state = read_state_dict(filename)
    if convert is not None:
        state = convert(state, model)
    own = model.state_dict()
    mismatched = [f'{k}: checkpoint {tuple(v.shape)} vs model {tuple(own[k].shape)}'
                  for k, v in state.items()
                  if k in own and isinstance(v, torch.Tensor) and v.shape != own[k].shape]
    if mismatched:
        raise RuntimeError(f'checkpoint {filename!r} does not fit {type(model).__name__}: '
                           f'shape mismatch for {len(mismatched)} keys:\n  ' +
                           '\n  '.join(mismatched[:20]))
    matched = [k for k in state if k in own]
    missing = [k for k in own if k not in state]
    unexpected = [k for k in state if k not in own]
    if len(matched) < MIN_MATCHED_FRACTION * len(own):
        raise RuntimeError(
            f'checkpoint {filename!r} does not fit {type(model).__name__}: only '
            f'{len(matched)}/{len(own)} model tensors found in it. Missing e.g. '
            f'{missing[:10]}; unexpected e.g. {unexpected[:10]}')
    model.load_state_dict({k: state[k] for k in matched}, strict=False)
    print_log(f'loaded {len(matched)}/{len(own)} tensors of {type(model).__name__} from '
              f'{filename}', logger=logger)
    if missing:
        print_log(f'missing keys ({len(missing)}): {missing}', logger=logger, level=30)
    if unexpected:
        print_log(f'unexpected keys ({len(unexpected)}): {unexpected}', logger=logger, level=30)
    return missing, unexpected
