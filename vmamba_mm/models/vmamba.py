"""VMamba: the hierarchical visual state-space backbone (2D Selective Scan).

Faithful to the released VMamba v3 models ("vssm1": forward type ``v05_noz``,
stem v2, downsample v3, channels-first) of Liu et al., *VMamba: Visual State
Space Model* (NeurIPS 2024). Tensors are NCHW throughout (inside, NCHW views of
channels-last memory, so that the LayerNorms and 1x1 projections run as plain
matrix products); the selective scan is the shared
:func:`vmamba_mm.ops.selective_scan` and the 4-direction traversal
:func:`vmamba_mm.ops.cross_scan` / :func:`vmamba_mm.ops.cross_merge`, registered
operators with a backend per device (Triton on GPU, chunked PyTorch elsewhere).
SS2D has one path on every device: time-major (B, L, K, D) sequences built from
the channels-last activations. On CPU, float32 inference fuses the MLP's first
linear layer with its GELU (:func:`~vmamba_mm.models.utils.linear`).

Module and parameter names follow the official code (``layers.{i}.blocks.{j}.op.*``,
``outnorm{i}``, ...) except the stem and the downsampling layers, whose official
names are positions in an ``nn.Sequential`` with placeholder layers; the official
checkpoints are mapped onto ours by :func:`convert_official_vmamba`.
"""
import math
import re

import torch
import torch.nn as nn
import torch.nn.functional as F
import torch.utils.checkpoint as cp
from mmengine.logging import print_log
from mmengine.model import BaseModule

from ..ops import cross_merge, cross_scan, selective_scan
from ..registry import register_model
from .checkpoint import load_pretrained
from .utils import (DropPath, at_least_fp32, check_backend_name, check_drop_path_rate,
                    check_input_dtype, linear)

# Released configurations (classification/configs/vssm/vmambav2*_224.yaml).
ARCH_SETTINGS = {
    'tiny': dict(depths=(2, 2, 8, 2), dims=96, d_state=1, ssm_ratio=1.0, mlp_ratio=4.0),
    'small': dict(depths=(2, 2, 15, 2), dims=96, d_state=1, ssm_ratio=2.0, mlp_ratio=4.0),
    'base': dict(depths=(2, 2, 15, 2), dims=128, d_state=1, ssm_ratio=2.0, mlp_ratio=4.0),
}
ARCH_REQUIRED_KEYS = {'depths', 'dims'}
ARCH_DEFAULTS = dict(d_state=1, ssm_ratio=1.0, mlp_ratio=4.0)


class LayerNorm2d(nn.LayerNorm):
    """LayerNorm over the channels of an NCHW tensor (eps 1e-5, as official).

    The result has channels-last strides (an NCHW view of NHWC memory), which
    :class:`Linear2d` and the convolutions consume without copies.
    """

    def forward(self, x):
        x = F.layer_norm(x.permute(0, 2, 3, 1), self.normalized_shape, self.weight, self.bias,
                         self.eps)
        return x.permute(0, 3, 1, 2)


class Linear2d(nn.Linear):
    """1x1 convolution on NCHW with an ``nn.Linear`` weight (out, in), as official.

    Computed as one matrix product over the channels of the NHWC view
    (:func:`~vmamba_mm.models.utils.linear`): no copy for channels-last inputs
    (what :class:`LayerNorm2d` returns), and about twice as fast on CPU as
    ``conv2d`` with a 1x1 kernel. The output is channels-last.
    """

    def forward(self, x):
        return linear(x.permute(0, 2, 3, 1), self.weight, self.bias).permute(0, 3, 1, 2)


class SS2D(nn.Module):
    """2D Selective Scan mixer without gate branch (official ``v05_noz``).

    in_proj (1x1) -> depthwise 3x3 -> SiLU -> cross-scan (4 directions) ->
    per-direction x/dt projections -> selective scan (4 groups) -> cross-merge ->
    LayerNorm -> out_proj (1x1).

    Args:
        dim (int): Input / output channels.
        d_state (int): SSM state size N.
        ssm_ratio (float): Inner width = ``int(ssm_ratio * dim)``.
        scan_backend (str, optional): backend of the selective scan (see
            :mod:`vmamba_mm.ops.backend`); ``None``: environment variable or device default.
        cross_scan_backend (str, optional): backend of cross-scan / cross-merge, likewise.
    """

    num_directions = 4
    # Initial time steps softplus(dt bias): log-uniform in [dt_min, dt_max] (Mamba).
    dt_min, dt_max, dt_init_floor = 0.001, 0.1, 1e-4

    def __init__(self, dim, d_state=1, ssm_ratio=1.0, scan_backend=None, cross_scan_backend=None):
        super().__init__()
        K = self.num_directions
        self.scan_backend = scan_backend
        self.cross_scan_backend = cross_scan_backend
        self.d_state = d_state
        self.d_inner = d_inner = int(ssm_ratio * dim)
        self.dt_rank = dt_rank = math.ceil(dim / 16)
        if d_inner < 1 or d_state < 1:
            raise ValueError(f'SS2D: need d_inner = int(ssm_ratio * dim) >= 1 and d_state >= 1, '
                             f'got dim={dim}, ssm_ratio={ssm_ratio}, d_state={d_state}')

        self.in_proj = Linear2d(dim, d_inner, bias=False)
        self.conv2d = nn.Conv2d(d_inner, d_inner, 3, padding=1, groups=d_inner, bias=False)
        self.act = nn.SiLU()
        # Per direction k: x -> (dt_rank + 2 * d_state) and dt_rank -> d_inner.
        self.x_proj_weight = nn.Parameter(torch.empty(K, dt_rank + 2 * d_state, d_inner))
        self.dt_projs_weight = nn.Parameter(torch.empty(K, d_inner, dt_rank))
        self.dt_projs_bias = nn.Parameter(torch.empty(K, d_inner))
        self.A_logs = nn.Parameter(torch.empty(K * d_inner, d_state))
        self.Ds = nn.Parameter(torch.empty(K * d_inner))
        self.out_norm = LayerNorm2d(d_inner)
        self.out_proj = Linear2d(d_inner, dim, bias=False)
        self._init_ssm()

    @torch.no_grad()
    def _init_ssm(self):
        # x_proj: nn.Linear's default (kaiming uniform, a=sqrt(5)) per direction.
        bound = 1 / math.sqrt(self.d_inner)
        self.x_proj_weight.uniform_(-bound, bound)
        std = self.dt_rank ** -0.5
        self.dt_projs_weight.uniform_(-std, std)
        # softplus(bias) = dt, log-uniform: bias = dt + log(1 - exp(-dt)).
        log_min, log_max = math.log(self.dt_min), math.log(self.dt_max)
        dt = torch.exp(torch.rand_like(self.dt_projs_bias) * (log_max - log_min) + log_min)
        dt = dt.clamp(min=self.dt_init_floor)
        self.dt_projs_bias.copy_(dt + torch.log(-torch.expm1(-dt)))
        # S4D-real: A = -[1, ..., N]; skip D = 1.
        self.A_logs.copy_(torch.log(torch.arange(1, self.d_state + 1, dtype=torch.float32))
                          .expand_as(self.A_logs))
        self.Ds.fill_(1.0)

    def forward(self, x):
        x = self.act(self.conv2d(self.in_proj(x)))
        B, D, H, W = x.shape
        K, N, R, L = self.num_directions, self.d_state, self.dt_rank, H * W
        # Time-major (B, L, K, D) throughout: the activations are channels-last, so
        # the scan inputs are whole-row copies of them (no channel/sequence transposes).
        xs = cross_scan(x.permute(0, 2, 3, 1), backend=self.cross_scan_backend,
                        layout='time_major')
        x_dbl = torch.einsum('blkd,kcd->blkc', xs, self.x_proj_weight)  # (B, L, K, R + 2N)
        dts, Bs, Cs = torch.split(x_dbl, [R, N, N], dim=3)
        dts = torch.einsum('blkr,kdr->blkd', dts, self.dt_projs_weight).reshape(B, L, K * D)
        # A, D and the dt bias enter the scan in (at least) float32, as official.
        ys = selective_scan(
            xs.view(B, L, K * D), dts, -torch.exp(at_least_fp32(self.A_logs)), Bs, Cs,
            at_least_fp32(self.Ds), delta_bias=at_least_fp32(self.dt_projs_bias).view(-1),
            delta_softplus=True, backend=self.scan_backend, layout='time_major')
        y = cross_merge(ys.view(B, H, W, K, D), backend=self.cross_scan_backend,
                        layout='time_major')  # (B, H, W, D)
        return self.out_proj(self.out_norm(y.to(x.dtype).permute(0, 3, 1, 2)))


class Mlp(nn.Module):
    """1x1 conv MLP on NCHW: fc1 -> GELU (exact) -> fc2, over the NHWC view.

    fc1 and its GELU are one call (fused on the CPU inference path of
    :func:`~vmamba_mm.models.utils.linear`).
    """

    def __init__(self, dim, hidden):
        super().__init__()
        self.fc1 = Linear2d(dim, hidden)
        self.fc2 = Linear2d(hidden, dim)

    def forward(self, x):
        h = linear(x.permute(0, 2, 3, 1), self.fc1.weight, self.fc1.bias, gelu=True)
        return linear(h, self.fc2.weight, self.fc2.bias).permute(0, 3, 1, 2)


class VSSBlock(nn.Module):
    """x + DropPath(SS2D(LN(x))), then x + DropPath(MLP(LN(x)))."""

    def __init__(self, dim, d_state=1, ssm_ratio=1.0, mlp_ratio=4.0, drop_path=0.0,
                 scan_backend=None, cross_scan_backend=None):
        super().__init__()
        self.norm = LayerNorm2d(dim)
        self.op = SS2D(dim, d_state=d_state, ssm_ratio=ssm_ratio, scan_backend=scan_backend,
                       cross_scan_backend=cross_scan_backend)
        self.drop_path = DropPath(drop_path) if drop_path > 0 else nn.Identity()
        self.norm2 = LayerNorm2d(dim)
        self.mlp = Mlp(dim, int(dim * mlp_ratio))

    def forward(self, x):
        x = x + self.drop_path(self.op(self.norm(x)))
        return x + self.drop_path(self.mlp(self.norm2(x)))


class PatchEmbed(nn.Module):
    """Stem (official v2): conv3x3/2 -> LN -> GELU -> conv3x3/2 -> LN; output stride 4."""

    def __init__(self, in_channels, dim):
        super().__init__()
        self.conv1 = nn.Conv2d(in_channels, dim // 2, 3, stride=2, padding=1)
        self.norm1 = LayerNorm2d(dim // 2)
        self.act = nn.GELU()
        self.conv2 = nn.Conv2d(dim // 2, dim, 3, stride=2, padding=1)
        self.norm2 = LayerNorm2d(dim)

    def forward(self, x):
        return self.norm2(self.conv2(self.act(self.norm1(self.conv1(x)))))


class Downsample(nn.Module):
    """Downsampling (official v3): conv3x3/2 -> LN."""

    def __init__(self, dim, out_dim):
        super().__init__()
        self.conv = nn.Conv2d(dim, out_dim, 3, stride=2, padding=1)
        self.norm = LayerNorm2d(out_dim)

    def forward(self, x):
        return self.norm(self.conv(x))


class VSSLayer(nn.Module):
    """One stage: blocks, then (except for the last stage) the downsampling."""

    def __init__(self, blocks, downsample=None):
        super().__init__()
        self.blocks = nn.Sequential(*blocks)
        self.downsample = downsample


@register_model
class VMamba(BaseModule):
    """VMamba backbone (the released v3 "vssm1" models), NCHW in and out.

    Every image size works: the stride-2 3x3 convolutions (padding 1) give
    stage ``i`` a ``ceil(H / 2**(i + 2)) x ceil(W / 2**(i + 2))`` feature map
    (strides 4, 8, 16, 32), so odd sizes need no padding by the caller.

    Args:
        arch (str | dict): 'tiny', 'small', 'base', or a dict with keys
            ``depths`` (blocks per stage; its length is the number of stages)
            and ``dims`` (width of the first stage; stage i has ``dims * 2**i``),
            and optionally ``d_state`` (1), ``ssm_ratio`` (1.0), ``mlp_ratio`` (4.0).
        in_channels (int): Input image channels. Defaults to 3.
        drop_path_rate (float): Stochastic depth rate in [0, 1), increasing
            linearly over all blocks. Defaults to 0.2 (the official VMamba-T value).
        out_indices (Sequence[int]): Stages whose features are returned, each
            through its own LayerNorm (``outnorm{i}``). Defaults to (0, 1, 2, 3).
        frozen_stages (int): -1: train everything; 0: freeze the stem; k > 0:
            freeze the stem, stages 0..k-1 (with their downsampling) and their
            output norms. Frozen parts stay in eval mode (mmdet convention).
        with_cp (bool): Gradient checkpointing per block (saves memory).
        scan_backend (str, optional): backend of the selective scan ('reference',
            'torch', 'cpu', 'triton'; see :mod:`vmamba_mm.ops.backend`). ``None``:
            the environment variable ``VMAMBA_MM_SCAN_BACKEND`` if set, else
            'triton' for CUDA tensors and 'cpu' (the C++ kernel) for CPU tensors.
        cross_scan_backend (str, optional): backend of cross-scan / cross-merge,
            chosen independently (``None``: ``VMAMBA_MM_CROSS_SCAN_BACKEND``, else
            the device default).
        init_cfg (dict | list[dict], optional): mmengine init config;
            ``dict(type='Pretrained', checkpoint=PATH)`` loads an official
            VMamba classification / detection / segmentation checkpoint or one
            of ours (see :func:`convert_official_vmamba`).
    """

    def __init__(self, arch='tiny', in_channels=3, drop_path_rate=0.2, out_indices=(0, 1, 2, 3),
                 frozen_stages=-1, with_cp=False, scan_backend=None, cross_scan_backend=None,
                 init_cfg=None):
        super().__init__(init_cfg=init_cfg)
        arch = self._parse_arch(arch)
        check_backend_name('VMamba', 'scan_backend', scan_backend, 'selective_scan')
        check_backend_name('VMamba', 'cross_scan_backend', cross_scan_backend, 'cross_scan')
        depths = arch['depths']
        num_stages = len(depths)
        self.dims = [int(arch['dims'] * 2 ** i) for i in range(num_stages)]
        self.in_channels = in_channels
        out_indices = tuple(out_indices)
        bad = [i for i in out_indices if not (isinstance(i, int) and 0 <= i < num_stages)]
        if bad or len(set(out_indices)) != len(out_indices):
            raise ValueError(f'VMamba: out_indices must be distinct stage indices in '
                             f'[0, {num_stages - 1}], got {out_indices}')
        check_drop_path_rate('VMamba', drop_path_rate)
        if not -1 <= frozen_stages <= num_stages:
            raise ValueError(f'VMamba: frozen_stages must be in [-1, {num_stages}], '
                             f'got {frozen_stages}')
        self.out_indices = out_indices
        self.frozen_stages = frozen_stages
        self.with_cp = with_cp

        self.patch_embed = PatchEmbed(in_channels, self.dims[0])
        dpr = torch.linspace(0, drop_path_rate, sum(depths)).tolist()
        self.layers = nn.ModuleList()
        for i, depth in enumerate(depths):
            blocks = [VSSBlock(self.dims[i], d_state=arch['d_state'], ssm_ratio=arch['ssm_ratio'],
                               mlp_ratio=arch['mlp_ratio'], drop_path=dpr[sum(depths[:i]) + j],
                               scan_backend=scan_backend, cross_scan_backend=cross_scan_backend)
                      for j in range(depth)]
            downsample = Downsample(self.dims[i], self.dims[i + 1]) if i < num_stages - 1 else None
            self.layers.append(VSSLayer(blocks, downsample))
        for i in out_indices:
            self.add_module(f'outnorm{i}', LayerNorm2d(self.dims[i]))
        self.apply(self._init_linear_and_norm)
        self._channels_last_conv_weights()
        self._freeze_stages()

    def _channels_last_conv_weights(self):
        # Same shapes and values, channels-last memory: the activations are
        # channels-last, and on CPU oneDNN would otherwise reorder each weight on
        # every call (up to 3x the convolution itself for the last downsampling).
        # In-place initialisation and checkpoint loading keep this memory format.
        for m in self.modules():
            if isinstance(m, nn.Conv2d):
                m.weight = nn.Parameter(
                    m.weight.detach().contiguous(memory_format=torch.channels_last),
                    requires_grad=m.weight.requires_grad)

    @staticmethod
    def _parse_arch(arch):
        if isinstance(arch, str):
            if arch not in ARCH_SETTINGS:
                raise ValueError(f'VMamba: unknown arch {arch!r}; choose one of '
                                 f'{sorted(ARCH_SETTINGS)} or pass a dict')
            return dict(ARCH_SETTINGS[arch])
        if not isinstance(arch, dict):
            raise TypeError(f'VMamba: arch must be a str or a dict, got {type(arch).__name__}')
        missing = ARCH_REQUIRED_KEYS - set(arch)
        unknown = set(arch) - ARCH_REQUIRED_KEYS - set(ARCH_DEFAULTS)
        if missing or unknown:
            raise ValueError(f'VMamba: arch dict has missing keys {sorted(missing)} and unknown '
                             f'keys {sorted(unknown)}; required {sorted(ARCH_REQUIRED_KEYS)}, '
                             f'optional {sorted(ARCH_DEFAULTS)}')
        arch = {**ARCH_DEFAULTS, **arch}
        depths = arch['depths']
        if (not isinstance(depths, (list, tuple)) or not depths
                or not all(isinstance(d, int) and d >= 1 for d in depths)):
            raise ValueError(f'VMamba: arch depths must be a non-empty list of positive ints, '
                             f'got {depths!r}')
        if not isinstance(arch['dims'], int) or arch['dims'] < 2:
            raise ValueError(f'VMamba: arch dims must be an int >= 2, got {arch["dims"]!r}')
        arch['depths'] = tuple(depths)
        return arch

    @staticmethod
    def _init_linear_and_norm(m):
        # Official init: trunc_normal(0.02) linear weights, zero bias; LN = identity.
        if isinstance(m, nn.Linear):
            nn.init.trunc_normal_(m.weight, std=0.02)
            if m.bias is not None:
                nn.init.zeros_(m.bias)
        elif isinstance(m, nn.LayerNorm):
            nn.init.ones_(m.weight)
            nn.init.zeros_(m.bias)

    def init_weights(self):
        """Load ``init_cfg=dict(type='Pretrained', checkpoint=...)`` loudly (see
        :func:`load_pretrained`); other init_cfg types go through mmengine."""
        cfg = self.init_cfg
        if isinstance(cfg, dict) and cfg.get('type') == 'Pretrained':
            if 'checkpoint' not in cfg:
                raise ValueError("VMamba: init_cfg type='Pretrained' needs a 'checkpoint' path")
            load_pretrained(self, cfg['checkpoint'], convert=convert_official_vmamba)
            self._is_init = True
        else:
            super().init_weights()

    def _frozen_modules(self):
        if self.frozen_stages < 0:
            return []
        mods = [self.patch_embed]
        for i in range(self.frozen_stages):
            mods.append(self.layers[i])
            if i in self.out_indices:
                mods.append(getattr(self, f'outnorm{i}'))
        return mods

    def _freeze_stages(self):
        for m in self._frozen_modules():
            m.eval()
            for p in m.parameters():
                p.requires_grad = False

    def train(self, mode=True):
        super().train(mode)
        self._freeze_stages()
        return self

    def _check_input(self, x):
        if not isinstance(x, torch.Tensor):
            raise TypeError(f'VMamba: input must be a Tensor, got {type(x).__name__}')
        if x.dim() != 4:
            raise ValueError(f'VMamba: input must be 4D (N, C, H, W), got shape {tuple(x.shape)}')
        if x.shape[1] != self.in_channels:
            raise ValueError(f'VMamba: expected {self.in_channels} input channels, got '
                             f'{x.shape[1]} (input shape {tuple(x.shape)})')
        if x.shape[0] < 1:
            raise ValueError(f'VMamba: empty batch (input shape {tuple(x.shape)})')
        if x.shape[2] < 1 or x.shape[3] < 1:
            raise ValueError(f'VMamba: input must be at least 1x1 pixels, got shape '
                             f'{tuple(x.shape)}')
        check_input_dtype('VMamba', x, self.patch_embed.conv1.weight)

    def forward(self, x):
        """(N, C, H, W) -> tuple of contiguous NCHW features, one per ``out_indices`` entry.

        Inside, features are NCHW views of channels-last memory (see
        :class:`LayerNorm2d`); the outputs are made contiguous NCHW.
        """
        self._check_input(x)
        x = self.patch_embed(x)
        outs = []
        for i, layer in enumerate(self.layers):
            for block in layer.blocks:
                if self.with_cp and self.training and x.requires_grad:
                    x = cp.checkpoint(block, x, use_reentrant=False)
                else:
                    x = block(x)
            if i in self.out_indices:
                outs.append(getattr(self, f'outnorm{i}')(x).contiguous())
            if layer.downsample is not None:
                x = layer.downsample(x)
        return tuple(outs)


# Official key prefix -> ours (see the module docstring).
_OFFICIAL_RENAMES = (
    (re.compile(r'^patch_embed\.0\.'), 'patch_embed.conv1.'),
    (re.compile(r'^patch_embed\.2\.'), 'patch_embed.norm1.'),
    (re.compile(r'^patch_embed\.5\.'), 'patch_embed.conv2.'),
    (re.compile(r'^patch_embed\.7\.'), 'patch_embed.norm2.'),
    (re.compile(r'^layers\.(\d+)\.downsample\.1\.'), r'layers.\1.downsample.conv.'),
    (re.compile(r'^layers\.(\d+)\.downsample\.3\.'), r'layers.\1.downsample.norm.'),
)


def convert_official_vmamba(state, model):
    """Map an official VMamba state dict onto :class:`VMamba`'s names.

    Handles the released classification checkpoints (VSSM: ``classifier.norm``
    becomes the last stage's output norm, ``classifier.head`` is dropped) and the
    detection / segmentation ones (Backbone_VSSM, ``outnorm{i}``; the ``backbone.``
    prefix is removed by :func:`read_state_dict`). Keys already in our naming
    pass through unchanged, and 1x1 weights saved as conv kernels (out, in, 1, 1)
    are viewed as the (out, in) matrices our ``Linear2d`` layers hold.

    Args:
        state (dict[str, Tensor]): checkpoint state dict (unwrapped).
        model (VMamba): the model it is loaded into.

    Returns:
        dict[str, Tensor]: the converted state dict.
    """
    own = model.state_dict()
    last_norm = f'outnorm{len(model.layers) - 1}'
    out = {}
    for key, value in state.items():
        if key.startswith('classifier.head.'):
            continue
        if key.startswith('classifier.norm.'):
            target = last_norm + key[len('classifier.norm'):]
            if target not in own or target in state:
                continue
            key = target
        for pattern, repl in _OFFICIAL_RENAMES:
            key = pattern.sub(repl, key)
        if (key in own and isinstance(value, torch.Tensor) and own[key].dim() == 2
                and value.dim() == 4 and value.shape[2:] == (1, 1)
                and value.shape[:2] == own[key].shape):
            value = value.flatten(1)
        out[key] = value
    dropped = [k for k in state if k.startswith('classifier.')]
    if dropped:
        print_log(f'convert_official_vmamba: classifier keys used for {last_norm} or dropped: '
                  f'{dropped}', logger='current')
    return out
