"""Layer-wise learning-rate decay for models with a :class:`~.vim.Vim` backbone.

Use in a config::

    optim_wrapper = dict(
        type='OptimWrapper',  # or 'AmpOptimWrapper'
        optimizer=dict(type='AdamW', lr=1e-4, betas=(0.9, 0.999), weight_decay=0.05),
        constructor='VimLayerDecayOptimizerConstructor',
        paramwise_cfg=dict(layer_decay_rate=0.92))

With ``L`` Vim blocks, parameters get a layer id: 0 for the embeddings
(``patch_embed``, ``cls_token``, ``pos_embed``), ``i + 1`` for block ``i``, and
``L + 1`` for everything else (``norm_f``, the backbone's feature pyramid, necks,
decode/auxiliary/classification heads). The lr of layer id ``k`` is
``lr * layer_decay_rate ** (L + 1 - k)``. Weight decay is 0 for ``pos_embed``,
``cls_token``, ``A_log``, ``A_b_log``, ``D``, ``D_b``, biases and every other
1-D parameter (norms), the base ``weight_decay`` otherwise.
"""
from mmengine.logging import print_log
from mmengine.optim import DefaultOptimWrapperConstructor

from ..registry import register_optim_constructor
from .vim import Vim

NO_DECAY_NAMES = ('pos_embed', 'cls_token', 'A_log', 'A_b_log', 'D', 'D_b')
EMBEDDING_NAMES = ('patch_embed', 'cls_token', 'pos_embed')


def vim_layer_id(name, num_layers):
    """Layer id of a Vim parameter (``name`` relative to the Vim module)."""
    if name.split('.')[0] in EMBEDDING_NAMES:
        return 0
    if name.startswith('layers.'):
        return int(name.split('.')[1]) + 1
    return num_layers + 1


@register_optim_constructor
class VimLayerDecayOptimizerConstructor(DefaultOptimWrapperConstructor):
    """Optimizer constructor with BEiT-style layer-wise lr decay for Vim.

    ``paramwise_cfg`` takes exactly one key, ``layer_decay_rate`` (float in
    (0, 1]). The number of layers is read from the model's (single) Vim module,
    which may be the model itself or a submodule (e.g. ``backbone``).
    """

    def __init__(self, optim_wrapper_cfg, paramwise_cfg=None):
        paramwise_cfg = dict(paramwise_cfg or {})
        if set(paramwise_cfg) != {'layer_decay_rate'}:
            raise ValueError('VimLayerDecayOptimizerConstructor: paramwise_cfg must be '
                             f'dict(layer_decay_rate=...), got keys {sorted(paramwise_cfg)}')
        rate = paramwise_cfg['layer_decay_rate']
        if not 0 < rate <= 1:
            raise ValueError(f'VimLayerDecayOptimizerConstructor: layer_decay_rate must be '
                             f'in (0, 1], got {rate}')
        super().__init__(optim_wrapper_cfg, paramwise_cfg)

    def add_params(self, params, module, **kwargs):
        """Fill ``params`` with one group per (layer id, decay / no decay)."""
        vims = [(name, m) for name, m in module.named_modules() if isinstance(m, Vim)]
        if len(vims) != 1:
            raise TypeError('VimLayerDecayOptimizerConstructor needs a model with exactly '
                            f'one Vim module, found {len(vims)} in {type(module).__name__}')
        vim_prefix, vim = vims[0]
        vim_prefix = vim_prefix + '.' if vim_prefix else ''
        num_layers = vim.num_layers
        rate = self.paramwise_cfg['layer_decay_rate']
        base_lr, base_wd = self.base_lr, self.base_wd or 0.

        groups = {}
        for name, param in module.named_parameters():
            if not param.requires_grad:
                continue
            if vim_prefix == '' or name.startswith(vim_prefix):
                layer_id = vim_layer_id(name[len(vim_prefix):], num_layers)
            else:
                layer_id = num_layers + 1
            no_decay = (param.ndim == 1 or name.endswith('.bias') or
                        name.split('.')[-1] in NO_DECAY_NAMES)
            key = (layer_id, 'no_decay' if no_decay else 'decay')
            if key not in groups:
                groups[key] = dict(
                    params=[], param_names=[],
                    lr=base_lr * rate**(num_layers + 1 - layer_id),
                    weight_decay=0. if no_decay else base_wd)
            groups[key]['params'].append(param)
            groups[key]['param_names'].append(name)
        for key in sorted(groups):
            g = groups[key]
            print_log(f'layer decay: layer {key[0]:>2} {key[1]:<8} {len(g["params"]):>4} tensors '
                      f'lr {g["lr"]:.3g} weight_decay {g["weight_decay"]}', logger='current')
            params.append(g)
