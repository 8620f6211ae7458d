"""Vim (Vision Mamba): a plain, ViT-like backbone of bidirectional Mamba blocks.

Faithful to the released ``vim_*_patch16_224_bimambav2_final_pool_mean_abs_pos_embed_
with_midclstok_div2`` models of hustvl/Vim (Zhu et al., 2024): 16x16 patch
embedding, absolute position embedding, a class token in the *middle* of the token
sequence, and ``num_layers`` blocks of

    residual <- residual + drop_path(hidden)        (kept in float32)
    hidden   <- BidirectionalMamba(RMSNorm(residual))

followed by a final add + RMSNorm (``norm_f``). The mixer is Mamba's "bimamba v2":
one shared ``in_proj`` / ``out_proj`` and, per direction, its own causal depthwise
conv1d, ``x_proj``, ``dt_proj``, ``A_log`` and ``D``; the backward direction runs on
the flipped sequence, and the two outputs are averaged ("divide out"). Both
directions go through ONE call of the shared :func:`vmamba_mm.ops.selective_scan`,
stacked as two channel groups (each with its own B and C).

Module and parameter names are those of the official checkpoints
(``patch_embed.proj``, ``cls_token``, ``pos_embed``, ``layers.{i}.norm``,
``layers.{i}.mixer.{in_proj,conv1d,x_proj,dt_proj,A_log,D,conv1d_b,...}``,
``norm_f``; ``fpn1``-``fpn4`` of the segmentation backbone), so an official
``{'model': state_dict}`` loads after dropping ``head.*`` and resizing
``pos_embed``, and so does an official segmentation checkpoint (dense mode, which,
like the official ``VisionMambaSeg``, has no class token).
"""
import math

import torch
import torch.nn as nn
import torch.nn.functional as F
import torch.utils.checkpoint as cp
from mmengine.model import BaseModule
from mmengine.model.weight_init import trunc_normal_

from ..ops import selective_scan
from ..registry import register_model
from .checkpoint import load_pretrained
from .utils import (DropPath, at_least_fp32, build_norm_layer, check_backend_name,
                    check_drop_path_rate, check_input_dtype)


class RMSNorm(nn.Module):
    """Root-mean-square norm over the last dimension, computed in float32.

    Returns float32 (or float64 for float64 input); callers cast as needed.
    """

    def __init__(self, dim, eps=1e-5):
        super().__init__()
        self.eps = eps
        self.weight = nn.Parameter(torch.ones(dim))

    def forward(self, x):
        x = at_least_fp32(x)
        x = x * torch.rsqrt(x.square().mean(-1, keepdim=True) + self.eps)
        return x * self.weight.to(x.dtype)


def causal_conv_silu(u, weight, bias):
    """SiLU of the causal depthwise convolution of (B, C, L) ``u``: pad ``k - 1`` on
    both sides, keep the first L outputs (the official ``conv1d`` + ``act``)."""
    k = weight.shape[-1]
    return F.silu(F.conv1d(u, weight, bias, padding=k - 1, groups=u.shape[1])[..., :u.shape[-1]])


class BidirectionalMamba(nn.Module):
    """Mamba mixer with a forward and a backward scan ("bimamba v2", divide out).

    Args:
        dim (int): token width (``d_model``).
        d_state (int): SSM state size N. Defaults to 16.
        expand (int): inner width = ``expand * dim``. Defaults to 2.
        d_conv (int): causal depthwise conv kernel size. Defaults to 4.
        num_layers (int): depth of the network, used to scale the initial
            ``out_proj`` weights by ``1/sqrt(num_layers)`` as the official init.
        dt_min, dt_max (float): range of the initial time steps.
        scan_backend (str, optional): backend of the selective scan (see
            :mod:`vmamba_mm.ops.backend`); ``None``: environment variable or device default.
    """

    def __init__(self, dim, d_state=16, expand=2, d_conv=4, num_layers=24,
                 dt_min=0.001, dt_max=0.1, scan_backend=None):
        super().__init__()
        self.scan_backend = scan_backend
        self.d_inner = d_inner = expand * dim
        self.d_state = d_state
        self.d_conv = d_conv
        self.dt_rank = math.ceil(dim / 16)
        self.in_proj = nn.Linear(dim, 2 * d_inner, bias=False)
        self.out_proj = nn.Linear(d_inner, dim, bias=False)
        # Per direction: '' (forward) and '_b' (backward, on the flipped sequence).
        for sfx in ('', '_b'):
            conv = nn.Conv1d(d_inner, d_inner, d_conv, groups=d_inner, padding=d_conv - 1)
            x_proj = nn.Linear(d_inner, self.dt_rank + 2 * d_state, bias=False)
            dt_proj = nn.Linear(self.dt_rank, d_inner, bias=True)
            setattr(self, f'conv1d{sfx}', conv)
            setattr(self, f'x_proj{sfx}', x_proj)
            setattr(self, f'dt_proj{sfx}', dt_proj)
            # S4D-real init: A = -(1..N) for every channel, kept as log in float32.
            A = torch.arange(1, d_state + 1, dtype=torch.float32).repeat(d_inner, 1)
            a_name = 'A_log' if sfx == '' else 'A_b_log'
            setattr(self, a_name, nn.Parameter(torch.log(A)))
            setattr(self, f'D{sfx}', nn.Parameter(torch.ones(d_inner)))
            self._init_dt(dt_proj, dt_min, dt_max)
        nn.init.kaiming_uniform_(self.out_proj.weight, a=math.sqrt(5))
        with torch.no_grad():
            self.out_proj.weight /= math.sqrt(num_layers)

    def _init_dt(self, dt_proj, dt_min, dt_max, floor=1e-4):
        std = self.dt_rank**-0.5
        nn.init.uniform_(dt_proj.weight, -std, std)
        dt = torch.exp(torch.rand(self.d_inner) * (math.log(dt_max) - math.log(dt_min)) +
                       math.log(dt_min)).clamp(min=floor)
        with torch.no_grad():  # softplus(bias) = dt
            dt_proj.bias.copy_(dt + torch.log(-torch.expm1(-dt)))

    def forward(self, x):
        """(B, L, dim) -> (B, L, dim)."""
        batch, L, _ = x.shape
        E, N, R = self.d_inner, self.d_state, self.dt_rank
        # in_proj straight into the channel-major layout of the convolution and the
        # scan, (B, 2E, L) contiguous: the product reads x transposed, no copy.
        xz = torch.bmm(self.in_proj.weight.expand(batch, -1, -1), x.transpose(1, 2))
        u, z = xz.chunk(2, dim=1)
        # Stack the directions as channel groups: [forward; backward on the flipped sequence].
        u = torch.cat([u, u.flip(-1)], dim=1)
        z = torch.cat([z, z.flip(-1)], dim=1)
        del xz  # copied into u and z: freed before the convolution and the scan run
        conv_w = torch.cat([self.conv1d.weight, self.conv1d_b.weight])
        conv_b = torch.cat([self.conv1d.bias, self.conv1d_b.bias])
        if torch.is_grad_enabled() and (u.requires_grad or conv_w.requires_grad):
            # Training: keep only the convolution's input for the backward, which
            # recomputes conv + SiLU (cheap), instead of both their outputs (one
            # (B, 2E, L) tensor less per layer).
            u = cp.checkpoint(causal_conv_silu, u, conv_w, conv_b, use_reentrant=False)
        else:
            u = causal_conv_silu(u, conv_w, conv_b)
        x_proj_w = torch.stack([self.x_proj.weight, self.x_proj_b.weight])  # (2, R+2N, E)
        x_dbl = torch.matmul(x_proj_w, u.view(batch, 2, E, L))  # (B, 2, R+2N, L)
        dt, B, C = x_dbl.split([R, N, N], dim=2)
        dt_w = torch.stack([self.dt_proj.weight, self.dt_proj_b.weight])  # (2, E, R)
        dt = torch.matmul(dt_w, dt).reshape(batch, 2 * E, L)
        # A, D and the time-step bias enter the scan in (at least) float32.
        A = -torch.exp(at_least_fp32(torch.cat([self.A_log, self.A_b_log])))
        D = at_least_fp32(torch.cat([self.D, self.D_b]))
        dt_bias = at_least_fp32(torch.cat([self.dt_proj.bias, self.dt_proj_b.bias]))
        y = selective_scan(u, dt, A, B.contiguous(), C.contiguous(), D=D, z=z,
                           delta_bias=dt_bias, delta_softplus=True, backend=self.scan_backend)
        y_f, y_b = y.chunk(2, dim=1)
        # out_proj of the directions' mean (the 1/2 in its weight, one pass less),
        # computed channel-major: (B, dim, L), returned as a (B, L, dim) view.
        y = torch.matmul(self.out_proj.weight * 0.5, y_f + y_b.flip(-1))
        return y.transpose(1, 2)


class Block(nn.Module):
    """Add -> RMSNorm -> mixer, the official (fused add-norm) block layout.

    ``forward(hidden, residual)`` returns ``(mixer output, residual)``; the
    residual stream is kept in float32. The first block gets ``residual=None``
    and takes the embeddings as the residual.

    Args:
        dim (int): token width.
        drop_path (float): stochastic depth applied to the incoming ``hidden``
            (the previous block's mixer output) before it joins the residual.
        **mixer_kwargs: passed to :class:`BidirectionalMamba`.
    """

    def __init__(self, dim, drop_path=0., **mixer_kwargs):
        super().__init__()
        self.norm = RMSNorm(dim)
        self.mixer = BidirectionalMamba(dim, **mixer_kwargs)
        self.drop_path = DropPath(drop_path) if drop_path > 0 else nn.Identity()

    def forward(self, hidden, residual=None):
        if residual is None:
            residual = at_least_fp32(hidden)
        else:
            residual = residual + at_least_fp32(self.drop_path(hidden))
        return self.mixer(self.norm(residual).to(hidden.dtype)), residual


class PatchEmbed(nn.Module):
    """Non-overlapping patch embedding: (B, C, H, W) -> (B, h*w, dim), (h, w).

    The grid is ``floor(H / p) x floor(W / p)``: trailing rows/columns that do not
    fill a whole patch are ignored (mmdet/mmseg data preprocessors pad to 32).
    """

    def __init__(self, in_channels, dim, patch_size):
        super().__init__()
        self.patch_size = patch_size
        self.proj = nn.Conv2d(in_channels, dim, patch_size, stride=patch_size)

    def forward(self, x):
        x = self.proj(x)
        return x.flatten(2).transpose(1, 2), tuple(x.shape[2:])


def resize_pos_embed(pos_embed, src_hw, dst_hw, cls_token=True):
    """Resize a position embedding to another patch grid.

    Args:
        pos_embed (Tensor): (1, h*w + 1, C) with a class token, whose entry is
            ``h*w // 2`` (the layout of the official ``midclstok`` models), the
            others the patches' in row-major order; or (1, h*w, C) without one
            (the official segmentation backbone).
        src_hw (tuple[int]): the grid ``(h, w)`` of ``pos_embed``.
        dst_hw (tuple[int]): the wanted grid.
        cls_token (bool): whether ``pos_embed`` has the class token's entry.

    Returns:
        Tensor: (1, H*W [+ 1], C), patches resized bicubically (as the official
        ``interpolate_pos_embed``), the class token's entry (if any) kept and
        placed at index ``H*W // 2``.
    """
    src_hw, dst_hw = tuple(src_hw), tuple(dst_hw)
    num_src = src_hw[0] * src_hw[1]
    extra = int(cls_token)
    if pos_embed.shape[1] != num_src + extra:
        raise ValueError(f'pos_embed has {pos_embed.shape[1]} entries; a {src_hw} grid'
                         f'{" plus the class token" if cls_token else ""} needs {num_src + extra}')
    if src_hw == dst_hw:
        return pos_embed
    mid = num_src // 2
    if cls_token:
        cls = pos_embed[:, mid:mid + 1]
        patches = torch.cat([pos_embed[:, :mid], pos_embed[:, mid + 1:]], dim=1)
    else:
        patches = pos_embed
    grid = patches.reshape(1, *src_hw, -1).permute(0, 3, 1, 2)
    grid = F.interpolate(grid.float(), size=dst_hw, mode='bicubic', align_corners=False)
    patches = grid.to(pos_embed.dtype).flatten(2).transpose(1, 2)
    if not cls_token:
        return patches
    mid = dst_hw[0] * dst_hw[1] // 2
    return torch.cat([patches[:, :mid], cls, patches[:, mid:]], dim=1)


@register_model
class Vim(BaseModule):
    """Vision Mamba backbone (mmpretrain / mmseg / mmdet).

    Args:
        arch (str | dict): 'tiny' (192 wide), 'small' (384) or 'base' (768), all
            24 layers, d_state 16, expand 2; or a dict with exactly the keys
            ``embed_dims``, ``num_layers``, ``d_state``, ``expand``.
        img_size (int | tuple[int]): size the stored position embedding is made
            for. Any input size works: ``pos_embed`` is resized (bicubic) to the
            actual patch grid at forward time, and a checkpoint trained at another
            size is resized to ``img_size`` when loaded. Defaults to 224.
        patch_size (int): Defaults to 16.
        in_channels (int): Defaults to 3.
        out_type (str): 'cls_token': a 1-tuple with the normed middle class token,
            (B, C) (the classification model's feature; its head is a Linear on
            it). 'featmap': dense features for detection/segmentation, a 4-tuple
            at strides 4, 8, 16, 32 (for patch 16), each (B, C, h, w), from the
            blocks in ``out_indices``. As the official ``seg/backbone/vim.py``
            (``VisionMambaSeg``, ``if_cls_token=False``): no class token (the
            sequence is the patches, ``pos_embed`` has one entry per patch); the
            feature of block i is its mixer output (not normed, no residual
            added); then ConvTranspose2d-norm-GELU-ConvTranspose2d (x4),
            ConvTranspose2d (x2), identity, 2x2 max-pool rounding up (an
            ``h x w`` patch grid gives ``ceil(h/2) x ceil(w/2)``, so any input of
            at least one patch a side works). Blocks after the last
            out index are not run, and ``norm_f`` does not exist in this mode.
            Defaults to 'cls_token'.
        out_indices (Sequence[int], optional): for 'featmap', the blocks feeding
            the stride 4, 8, 16 and 32 outputs, in that order (negative counts from
            the end; repeats allowed); None means (5, 11, 17, 23). Not allowed with
            'cls_token' (it would be ignored). Defaults to None.
        drop_path_rate (float): stochastic depth in [0, 1), linear over the blocks.
        norm_cfg (dict): norm of the stride-4 branch. Defaults to BN (the
            official configs use SyncBN).
        with_cp (bool): gradient checkpointing per block.
        scan_backend (str, optional): backend of the selective scan ('reference',
            'torch', 'cpu', 'triton'; see :mod:`vmamba_mm.ops.backend`). ``None``:
            the environment variable ``VMAMBA_MM_SCAN_BACKEND`` if set, else
            'triton' for CUDA tensors and 'cpu' (the C++ kernel) for CPU tensors.
        init_cfg (dict, optional): ``dict(type='Pretrained', checkpoint=...)``
            loads an official (or our own) checkpoint with key conversion and
            position-embedding resizing; other types go to mmengine.
    """

    arch_zoo = {
        'tiny': dict(embed_dims=192, num_layers=24, d_state=16, expand=2),
        'small': dict(embed_dims=384, num_layers=24, d_state=16, expand=2),
        'base': dict(embed_dims=768, num_layers=24, d_state=16, expand=2),
    }
    OUT_TYPES = ('cls_token', 'featmap')

    def __init__(self,
                 arch='tiny',
                 img_size=224,
                 patch_size=16,
                 in_channels=3,
                 out_type='cls_token',
                 out_indices=None,
                 drop_path_rate=0.,
                 norm_cfg=dict(type='BN', requires_grad=True),
                 with_cp=False,
                 scan_backend=None,
                 init_cfg=None):
        super().__init__(init_cfg=init_cfg)
        arch = self._parse_arch(arch)
        check_backend_name('Vim', 'scan_backend', scan_backend, 'selective_scan')
        self.embed_dims = dim = arch['embed_dims']
        self.num_layers = arch['num_layers']
        if out_type not in self.OUT_TYPES:
            raise ValueError(f'Vim: unknown out_type {out_type!r}; choose one of {self.OUT_TYPES}')
        self.out_type = out_type
        if out_type == 'cls_token' and out_indices is not None:
            raise ValueError(f"Vim: out_indices={out_indices} would be ignored with "
                             "out_type='cls_token' (one class-token output); drop it, or use "
                             "out_type='featmap'")
        check_drop_path_rate('Vim', drop_path_rate)
        if patch_size != 16 and out_type == 'featmap':
            raise ValueError(f'Vim: the featmap pyramid is defined for patch_size 16, '
                             f'got {patch_size}')
        self.patch_size = patch_size
        self.in_channels = in_channels
        img_size = (img_size, img_size) if isinstance(img_size, int) else tuple(img_size)
        self.patch_resolution = (img_size[0] // patch_size, img_size[1] // patch_size)
        if min(self.patch_resolution) < 1:
            raise ValueError(f'Vim: img_size {img_size} is smaller than one patch ({patch_size})')
        self.with_cp = with_cp

        self.patch_embed = PatchEmbed(in_channels, dim, patch_size)
        num_patches = self.patch_resolution[0] * self.patch_resolution[1]
        self.with_cls_token = out_type == 'cls_token'
        if self.with_cls_token:
            self.cls_token = nn.Parameter(torch.zeros(1, 1, dim))
        self.pos_embed = nn.Parameter(torch.zeros(1, num_patches + self.with_cls_token, dim))

        # Block i drops the mixer output of block i-1 with rate dpr[i-1]; the last
        # mixer's output (added before norm_f) gets dpr[-1] = drop_path_rate.
        dpr = torch.linspace(0, drop_path_rate, self.num_layers).tolist()
        mixer_kwargs = dict(d_state=arch['d_state'], expand=arch['expand'],
                            num_layers=self.num_layers, scan_backend=scan_backend)
        self.layers = nn.ModuleList([
            Block(dim, drop_path=([0.] + dpr)[i], **mixer_kwargs)
            for i in range(self.num_layers)
        ])

        if out_type == 'cls_token':
            self.norm_f = RMSNorm(dim)
            self.drop_path = DropPath(drop_path_rate) if drop_path_rate > 0 else nn.Identity()
        else:
            self.out_indices = self._parse_out_indices(
                (5, 11, 17, 23) if out_indices is None else out_indices)
            # Pyramid as the official seg/backbone/vim.py (same module names).
            self.fpn1 = nn.Sequential(
                nn.ConvTranspose2d(dim, dim, kernel_size=2, stride=2),
                build_norm_layer(norm_cfg, dim),
                nn.GELU(),
                nn.ConvTranspose2d(dim, dim, kernel_size=2, stride=2))
            self.fpn2 = nn.Sequential(nn.ConvTranspose2d(dim, dim, kernel_size=2, stride=2))
            self.fpn3 = nn.Identity()
            # ceil: odd grids round up (a 1x1 grid stays 1x1), as VMamba's strided convs
            self.fpn4 = nn.MaxPool2d(kernel_size=2, stride=2, ceil_mode=True)

        # Official initialisation (models_mamba.VisionMamba).
        trunc_normal_(self.pos_embed, std=.02)
        if self.with_cls_token:
            trunc_normal_(self.cls_token, std=.02)
        # lecun normal (truncated at 2 std) for the patch projection
        std = math.sqrt(1. / (in_channels * patch_size * patch_size)) / .87962566103423978
        nn.init.trunc_normal_(self.patch_embed.proj.weight, std=std, a=-2 * std, b=2 * std)
        nn.init.zeros_(self.patch_embed.proj.bias)

    def _parse_arch(self, arch):
        if isinstance(arch, str):
            if arch not in self.arch_zoo:
                raise ValueError(f'Vim: unknown arch {arch!r}; choose one of '
                                 f'{sorted(self.arch_zoo)} or pass a dict')
            return dict(self.arch_zoo[arch])
        if not isinstance(arch, dict):
            raise TypeError(f'Vim: arch must be a str or a dict, got {type(arch).__name__}')
        keys = {'embed_dims', 'num_layers', 'd_state', 'expand'}
        missing, unknown = keys - set(arch), set(arch) - keys
        if missing or unknown:
            raise ValueError(f'Vim: arch dict needs exactly the keys {sorted(keys)}; '
                             f'missing {sorted(missing)}, unknown {sorted(unknown)}')
        return dict(arch)

    def _parse_out_indices(self, out_indices):
        out_indices = [int(i) for i in out_indices]
        if len(out_indices) != 4:
            raise ValueError(f'Vim: out_type="featmap" needs 4 out_indices (one per '
                             f'pyramid level), got {out_indices}')
        resolved = []
        for i in out_indices:
            j = i + self.num_layers if i < 0 else i
            if not 0 <= j < self.num_layers:
                raise ValueError(f'Vim: out index {i} out of range for {self.num_layers} layers')
            resolved.append(j)
        return resolved

    def _check_input(self, x):
        if not isinstance(x, torch.Tensor) or x.dim() != 4:
            shape = tuple(x.shape) if isinstance(x, torch.Tensor) else type(x).__name__
            raise ValueError(f'Vim: expected a (B, C, H, W) tensor, got {shape}')
        if x.shape[1] != self.in_channels:
            raise ValueError(f'Vim: expected {self.in_channels} input channels, got '
                             f'{x.shape[1]} (input shape {tuple(x.shape)})')
        if x.shape[0] < 1:
            raise ValueError(f'Vim: empty batch (input shape {tuple(x.shape)})')
        if x.shape[2] < self.patch_size or x.shape[3] < self.patch_size:
            raise ValueError(f'Vim: input {x.shape[2]}x{x.shape[3]} is smaller than one '
                             f'{self.patch_size}x{self.patch_size} patch (the minimum input '
                             f'size is {self.patch_size}x{self.patch_size})')
        check_input_dtype('Vim', x, self.patch_embed.proj.weight)

    def forward(self, x):
        self._check_input(x)
        tokens, hw = self.patch_embed(x)
        mid = hw[0] * hw[1] // 2
        hidden = tokens
        if self.with_cls_token:
            cls = self.cls_token.expand(tokens.shape[0], -1, -1)
            hidden = torch.cat([tokens[:, :mid], cls, tokens[:, mid:]], dim=1)
        hidden = hidden + resize_pos_embed(self.pos_embed, self.patch_resolution, hw,
                                           self.with_cls_token)

        residual, feats = None, {}
        for i, layer in enumerate(self.layers):
            if self.with_cp and self.training and hidden.requires_grad:
                hidden, residual = cp.checkpoint(layer, hidden, residual, use_reentrant=False)
            else:
                hidden, residual = layer(hidden, residual)
            if self.out_type == 'featmap' and i in self.out_indices:
                feats[i] = hidden.transpose(1, 2).reshape(x.shape[0], -1, *hw).contiguous()
                if len(feats) == len(set(self.out_indices)):
                    break  # later blocks do not contribute

        if self.out_type == 'cls_token':
            residual = residual + at_least_fp32(self.drop_path(hidden))
            return (self.norm_f(residual)[:, mid].to(hidden.dtype), )
        pyramid = (self.fpn1, self.fpn2, self.fpn3, self.fpn4)
        return tuple(op(feats[i]) for op, i in zip(pyramid, self.out_indices))

    def init_weights(self):
        if self.init_cfg is not None and self.init_cfg.get('type') == 'Pretrained':
            load_pretrained(self, self.init_cfg['checkpoint'], convert=convert_official_vim)
            self._is_init = True
            return
        super().init_weights()


def convert_official_vim(state, model):
    """Official Vim state dict (classification or segmentation) -> :class:`Vim` keys.

    Drops the classifier ``head.*`` (and ``rope.*`` buffers of rope variants) and
    resizes ``pos_embed`` from the checkpoint's square grid to ``model``'s
    ``patch_resolution``:

    - a classification checkpoint (``{'model': ...}``, middle class token) into
      a 'cls_token' model: class token entry kept in the middle;
    - the same into a 'featmap' model (ImageNet initialisation of a dense
      model): ``cls_token`` and its ``pos_embed`` entry are dropped;
    - an official segmentation checkpoint (``VisionMambaSeg``, mmseg's
      ``{'state_dict': {'backbone.*': ...}}``, no class token) into a 'featmap'
      model: names already alike (``fpn1``-``fpn4`` included; its SyncBN keys
      are BN keys).

    Other keys are already named alike; leftovers (e.g. ``norm_f.weight`` for a
    dense model) are reported as unexpected by :func:`load_pretrained`.

    Raises:
        RuntimeError: for a checkpoint without class token loaded into a
            'cls_token' model, or a ``pos_embed`` that is not a square grid.
    """
    state = {k: v for k, v in state.items()
             if not k.startswith(('head.', 'rope.'))}
    if 'pos_embed' not in state:
        return state
    pos = state['pos_embed']
    has_cls = 'cls_token' in state
    if model.with_cls_token and not has_cls:
        raise RuntimeError(
            f'checkpoint has no cls_token (pos_embed {tuple(pos.shape)}: a segmentation '
            f'checkpoint?); it fits Vim(out_type="featmap"), not the class-token model')
    num_src = pos.shape[1] - has_cls
    if has_cls and not model.with_cls_token:
        state.pop('cls_token')
        mid = num_src // 2
        pos = torch.cat([pos[:, :mid], pos[:, mid + 1:]], dim=1)
    dst = model.patch_resolution
    if num_src != dst[0] * dst[1]:
        side = math.isqrt(num_src)
        if side * side != num_src:
            raise RuntimeError(
                f'checkpoint pos_embed {tuple(state["pos_embed"].shape)} has {num_src} patch '
                f'entries, not a square grid; cannot resize it to {dst}')
        pos = resize_pos_embed(pos, (side, side), dst, model.with_cls_token)
    state['pos_embed'] = pos
    return state
