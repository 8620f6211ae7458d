"""Lowering of the registered scan operators to standard operations, for export.

:func:`decomposition_table` maps ``vmamba_mm::selective_scan_fwd``,
``vmamba_mm::cross_scan`` and ``vmamba_mm::cross_merge`` to their decompositions
(:mod:`.selective_scan.decomposition`, :mod:`.cross_scan.decomposition`), for
``ExportedProgram.run_decompositions``: the exported graph then holds only
standard operators (ONNX: Mul, Add, Exp, Log, CumSum, Where, ReduceSum, Gather,
Reshape, Slice, Concat, ...), for any backend the model was traced with.

:func:`onnx_lowering` puts the same table where ``torch.onnx.export`` (dynamo)
looks for decompositions, so that the exporter's own decomposition pass lowers
the operators: one pass over the small graph, instead of a second pass that
re-traces the lowered graph (several times larger; minutes for VMamba-T).
"""
import contextlib

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


@contextlib.contextmanager
def onnx_lowering():
    """While active, ``torch.onnx.export(..., dynamo=True)`` lowers the operators.

    The exporter builds its decomposition table from ``torch._decomp.decomposition_table``;
    the entries of :func:`decomposition_table` are added to it for the duration
    and removed afterwards (entries already there are left alone).
    """
    table = torch._decomp.decomposition_table
    added = {op: fn for op, fn in decomposition_table().items() if op not in table}
    table.update(added)
    try:
        yield
    finally:
        for op in added:
            table.pop(op, None)
