"""Lowering of the registered scan operators to standard operations, for export.

:func:`decomposition_table` maps ``vmamba_mm::selective_scan_fwd``,
``vmamba_mm::cross_scan`` and ``vmamba_mm::cross_merge`` to their decompositions
(:mod:`.selective_scan.decomposition`, :mod:`.cross_scan.decomposition`), for
``ExportedProgram.run_decompositions``: the exported graph then holds only
standard operators (ONNX: Mul, Add, Exp, CumSum, Where, ReduceSum, Softplus,
Gather, Reshape, Slice, Concat, ...), for any backend the model was traced with.
"""
import torch

from .cross_scan.decomposition import cross_merge_decomposed, cross_scan_decomposed
from .selective_scan.decomposition import selective_scan_decomposed


def _selective_scan_fwd(u, delta, A, B, C, D, z, delta_bias, delta_softplus, time_major,
                        backend, save):
    if save:
        raise ValueError('vmamba_mm::selective_scan_fwd with save=True (tensors kept for a '
                         'backward pass) cannot be exported: export the model in eval mode '
                         'under torch.no_grad()')
    out, last = selective_scan_decomposed(u, delta, A, B, C, D, z, delta_bias, delta_softplus,
                                          time_major)
    empty = u.new_empty(0)
    return out, last, empty, empty


def _cross_scan(x, time_major, backend):
    return cross_scan_decomposed(x, time_major)


def _cross_merge(ys, time_major, backend):
    return cross_merge_decomposed(ys, time_major)


def decomposition_table():
    """{registered operator: decomposition}, for ``ExportedProgram.run_decompositions``."""
    ops = torch.ops.vmamba_mm
    return {
        ops.selective_scan_fwd.default: _selective_scan_fwd,
        ops.cross_scan.default: _cross_scan,
        ops.cross_merge.default: _cross_merge,
    }
