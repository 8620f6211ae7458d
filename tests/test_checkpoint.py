"""Loading official VMamba checkpoints (both released layouts) and the loader's errors."""
import re

import pytest
import torch

from vmamba_mm.models.checkpoint import load_pretrained
from vmamba_mm.models.vmamba import VMamba, convert_official_vmamba

ARCH = dict(depths=(1, 1, 2, 1), dims=8, ssm_ratio=2.0, d_state=1)
NUM_STAGES = 4

# Our names -> the official ones (VSSM / Backbone_VSSM with stem v2, downsample v3):
# the stem and the downsampling layers are nn.Sequential positions there.
TO_OFFICIAL = (
    (r'^patch_embed\.conv1\.', 'patch_embed.0.'),
    (r'^patch_embed\.norm1\.', 'patch_embed.2.'),
    (r'^patch_embed\.conv2\.', 'patch_embed.5.'),
    (r'^patch_embed\.norm2\.', 'patch_embed.7.'),
    (r'^layers\.(\d+)\.downsample\.conv\.', r'layers.\1.downsample.1.'),
    (r'^layers\.(\d+)\.downsample\.norm\.', r'layers.\1.downsample.3.'),
)


def to_official(key):
    for pattern, repl in TO_OFFICIAL:
        key = re.sub(pattern, repl, key)
    return key


def random_state(model, seed=0):
    g = torch.Generator().manual_seed(seed)
    return {k: torch.randn(v.shape, generator=g) for k, v in model.state_dict().items()}


def official_classification_ckpt(state):
    """{'model': VSSM state dict}: no output norms but classifier.norm / head."""
    last = f'outnorm{NUM_STAGES - 1}.'
    sd = {to_official(k): v for k, v in state.items() if not k.startswith('outnorm')}
    for name in ('weight', 'bias'):
        sd[f'classifier.norm.{name}'] = state[last + name]
    sd['classifier.head.weight'] = torch.randn(10, 64)
    sd['classifier.head.bias'] = torch.randn(10)
    return {'model': sd, 'epoch': 300, 'max_accuracy': 82.6}


def official_dense_ckpt(state):
    """{'state_dict': {'backbone.' + Backbone_VSSM key}} plus neck/head weights."""
    sd = {'backbone.' + to_official(k): v for k, v in state.items()}
    sd['neck.lateral_convs.0.conv.weight'] = torch.randn(8, 8, 1, 1)
    sd['decode_head.conv_seg.weight'] = torch.randn(3, 8, 1, 1)
    return {'state_dict': sd, 'meta': {'epoch': 12}}


def build_pretrained(path, **kwargs):
    model = VMamba(ARCH, init_cfg=dict(type='Pretrained', checkpoint=str(path)), **kwargs)
    model.init_weights()
    return model


def assert_state_equal(model, expected, keys):
    own = model.state_dict()
    for k in keys:
        torch.testing.assert_close(own[k], expected[k], rtol=0, atol=0, msg=k)


def test_official_names_cover_every_official_key():
    """Sanity of the test's own map: renamed keys follow the official pattern."""
    keys = {to_official(k) for k in VMamba(ARCH).state_dict()}
    assert 'patch_embed.0.weight' in keys and 'patch_embed.7.bias' in keys
    assert 'layers.0.downsample.1.weight' in keys and 'layers.0.downsample.3.weight' in keys
    assert 'layers.2.blocks.1.op.x_proj_weight' in keys and 'outnorm3.weight' in keys


def test_loads_official_classification_checkpoint(tmp_path):
    state = random_state(VMamba(ARCH))
    path = tmp_path / 'vssm1_tiny_cls.pth'
    torch.save(official_classification_ckpt(state), path)
    model = build_pretrained(path)
    not_in_ckpt = [f'outnorm{i}.{n}' for i in range(3) for n in ('weight', 'bias')]
    assert_state_equal(model, state, [k for k in state if k not in not_in_ckpt])
    # outnorm0-2 are not in a classification checkpoint: left at init (identity LN).
    torch.testing.assert_close(model.outnorm0.weight, torch.ones(8))
    torch.testing.assert_close(model.outnorm2.bias, torch.zeros(32))

    missing, unexpected = load_pretrained(VMamba(ARCH), str(path), convert=convert_official_vmamba)
    assert missing == not_in_ckpt
    assert unexpected == []


def test_loads_official_detection_checkpoint(tmp_path):
    state = random_state(VMamba(ARCH), seed=1)
    path = tmp_path / 'mask_rcnn_vssm_fpn_coco_tiny.pth'
    torch.save(official_dense_ckpt(state), path)
    model = build_pretrained(path)
    assert_state_equal(model, state, state.keys())


def test_loads_subset_of_output_norms(tmp_path):
    state = random_state(VMamba(ARCH), seed=2)
    path = tmp_path / 'upernet_vssm.pth'
    torch.save(official_dense_ckpt(state), path)
    model = build_pretrained(path, out_indices=(1,))
    assert not hasattr(model, 'outnorm0')
    assert_state_equal(model, state, model.state_dict().keys())


def test_loads_our_own_dense_checkpoint_and_conv_shaped_linears(tmp_path):
    state = random_state(VMamba(ARCH), seed=3)
    # Our names, mmdet layout, and 1x1 linear weights saved as conv kernels.
    sd = {'backbone.' + k: (v[:, :, None, None] if k.endswith(('in_proj.weight', 'fc1.weight'))
                            else v) for k, v in state.items()}
    path = tmp_path / 'ours.pth'
    torch.save({'state_dict': sd}, path)
    model = build_pretrained(path)
    assert_state_equal(model, state, state.keys())


def test_loaded_model_runs(tmp_path):
    src = VMamba(ARCH).eval()
    path = tmp_path / 'cls.pth'
    state = {k: v + 0.01 * torch.randn_like(v) for k, v in src.state_dict().items()}
    src.load_state_dict(state)
    torch.save(official_classification_ckpt(state), path)
    model = build_pretrained(path).eval()
    x = torch.randn(1, 3, 32, 32)
    with torch.no_grad():
        torch.testing.assert_close(model(x)[3], src(x)[3])


# ------------------------------------------------------------------- errors
def test_missing_file(tmp_path):
    path = tmp_path / 'nope.pth'
    with pytest.raises(FileNotFoundError, match='nope.pth'):
        build_pretrained(path)


def test_unreadable_file(tmp_path):
    path = tmp_path / 'corrupt.pth'
    path.write_bytes(b'this is not a checkpoint')
    with pytest.raises(RuntimeError, match=r'cannot read checkpoint .*corrupt\.pth'):
        build_pretrained(path)


def test_checkpoint_not_a_dict(tmp_path):
    path = tmp_path / 'list.pth'
    torch.save([torch.zeros(1)], path)
    with pytest.raises(TypeError, match='list'):
        build_pretrained(path)


def test_wrong_shapes_name_the_keys(tmp_path):
    wider = VMamba(dict(ARCH, dims=12))
    path = tmp_path / 'wider.pth'
    torch.save(official_dense_ckpt(wider.state_dict()), path)
    with pytest.raises(RuntimeError) as info:
        build_pretrained(path)
    msg = str(info.value)
    assert 'shape mismatch' in msg
    assert 'patch_embed.conv1.weight: checkpoint (6, 3, 3, 3) vs model (4, 3, 3, 3)' in msg


def test_nothing_matching_names_the_keys(tmp_path):
    path = tmp_path / 'resnet.pth'
    torch.save({'state_dict': {'conv1.weight': torch.zeros(64, 3, 7, 7),
                               'fc.weight': torch.zeros(10, 64)}}, path)
    with pytest.raises(RuntimeError) as info:
        build_pretrained(path)
    msg = str(info.value)
    assert '0/' in msg and 'conv1.weight' in msg and 'patch_embed.conv1.weight' in msg


def test_pretrained_without_path():
    model = VMamba(ARCH, init_cfg=dict(type='Pretrained'))
    with pytest.raises(ValueError, match='checkpoint'):
        model.init_weights()
