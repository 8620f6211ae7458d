"""Nothing silent: bad inputs and settings of the backbones give clear errors, and
Vim's dense outputs work for every input of at least one patch a side."""
import math

import pytest
import torch

from vmamba_mm.models.vim import Vim
from vmamba_mm.models.vmamba import VMamba

TINY_VMAMBA = dict(depths=[1, 1], dims=8, d_state=1)
TINY_VIM = dict(embed_dims=16, num_layers=2, d_state=4, expand=1)


def vim_dense(**kw):
    return Vim(arch=TINY_VIM, img_size=32, out_type='featmap', out_indices=(0, 1, 1, 1), **kw)


@pytest.mark.parametrize('hw', [(16, 16), (17, 33), (31, 64), (48, 80), (64, 64)])
def test_vim_dense_any_input_of_one_patch(hw):
    """Levels at strides 4 / 8 / 16 / 32 of the ``floor(H/16) x floor(W/16)`` patch
    grid, the stride-32 level rounding up (ceil), as VMamba's downsampling."""
    model = vim_dense().eval()
    with torch.no_grad():
        outs = model(torch.randn(2, 3, *hw))
    h, w = hw[0] // 16, hw[1] // 16
    assert [tuple(o.shape) for o in outs] == [
        (2, 16, 4 * h, 4 * w), (2, 16, 2 * h, 2 * w), (2, 16, h, w),
        (2, 16, math.ceil(h / 2), math.ceil(w / 2))]
    assert all(torch.isfinite(o).all() for o in outs)
    if h % 2 == 0 and w % 2 == 0:  # even grids: the plain 2x2 max-pool, unchanged
        assert torch.equal(outs[3], torch.nn.functional.max_pool2d(outs[2], 2))
    else:  # the last row / column is pooled over what exists
        assert torch.equal(outs[3][..., -1, -1],
                           outs[2][..., 2 * (outs[3].shape[2] - 1):, 2 * (outs[3].shape[3] - 1):]
                           .amax(dim=(-2, -1)))


def test_vim_below_one_patch_names_the_minimum():
    with pytest.raises(ValueError, match=r'input 15x40 is smaller than one 16x16 patch '
                                         r'\(the minimum input size is 16x16\)'):
        vim_dense()(torch.randn(1, 3, 15, 40))


@pytest.mark.parametrize('make', [lambda: VMamba(arch=TINY_VMAMBA, drop_path_rate=0., out_indices=(0, 1)),
                                  lambda: Vim(arch=TINY_VIM, img_size=32),
                                  vim_dense], ids=['vmamba', 'vim', 'vim-featmap'])
def test_bad_inputs_are_named(make):
    model = make().eval()
    name = type(model).__name__
    with pytest.raises(ValueError, match=rf'{name}: empty batch \(input shape \(0, 3, 32, 32\)\)'):
        model(torch.randn(0, 3, 32, 32))
    with pytest.raises(TypeError, match=rf'{name}: input must be floating point, got torch.uint8'):
        model(torch.zeros(1, 3, 32, 32, dtype=torch.uint8))
    with pytest.raises(TypeError, match=rf"{name}: input dtype torch.float16 differs from the "
                                        r"weights' torch.float32"):
        model(torch.randn(1, 3, 32, 32).half())
    # under autocast the input dtype may differ from the weights'
    with torch.no_grad(), torch.autocast('cpu', dtype=torch.bfloat16):
        outs = model(torch.randn(1, 3, 32, 32).bfloat16())
    assert all(torch.isfinite(o.float()).all() for o in outs)


@pytest.mark.parametrize('rate', [1.0, 1.5, -0.5, True, '0.1'])
def test_drop_path_rate_outside_0_1_raises(rate):
    with pytest.raises(ValueError, match=r'VMamba: drop_path_rate must be a number in \[0, 1\)'):
        VMamba(arch=TINY_VMAMBA, drop_path_rate=rate, out_indices=(0, 1))
    with pytest.raises(ValueError, match=r'Vim: drop_path_rate must be a number in \[0, 1\)'):
        Vim(arch=TINY_VIM, drop_path_rate=rate)


def test_vim_out_indices_with_cls_token_raises():
    with pytest.raises(ValueError, match=r"out_indices=\(3,\) would be ignored with "
                                         r"out_type='cls_token'"):
        Vim(arch=TINY_VIM, out_indices=(3, ))
    assert vim_dense().out_indices == [0, 1, 1, 1]
    assert Vim(arch=dict(TINY_VIM, num_layers=24), out_type='featmap').out_indices == [5, 11, 17, 23]
