"""Small helpers shared by the backbones."""
import torch


def at_least_fp32(t):
    """``t`` in float32, or unchanged if its dtype is already wider (float64).

    The SSM parameters (A, D, dt bias) enter the scan, and Vim's residual stream
    is kept, in at least float32 whatever the model / autocast dtype.
    """
    return t.to(torch.promote_types(t.dtype, torch.float32))
