"""Let ``torch.load(weights_only=True)`` read mmengine's own checkpoints.

Since torch 2.6 ``torch.load`` defaults to ``weights_only=True``, which refuses
every Python global not on an allowlist. mmengine (0.10) calls ``torch.load``
without ``weights_only``, so ``--resume`` and ``load_from`` fail on the
checkpoints mmengine itself writes ("Unsupported global: ... HistoryBuffer").
Those checkpoints contain, besides tensors and plain containers:

* ``mmengine.logging.HistoryBuffer`` (the message hub's logged scalars), whose
  pickled state refers to its statistics methods as ``getattr(HistoryBuffer, 'mean')``;
* numpy arrays, dtypes and scalars (the buffers' histories, seeds, metrics).

:func:`register_mmengine_safe_globals` allowlists exactly these, once, when
``vmamba_mm`` is imported. ``builtins.getattr`` is NOT allowlisted as such: the
name is bound to :func:`_history_buffer_getattr`, which only returns public
methods of ``HistoryBuffer`` and refuses anything else, so loading stays as safe
as torch's default for every other checkpoint.
"""
import importlib
import pickle

import numpy as np
import torch

_registered = False


def _numpy_globals():
    """numpy callables/classes that pickled arrays, dtypes and scalars refer to."""
    multiarray = importlib.import_module(
        'numpy._core.multiarray' if int(np.__version__.split('.')[0]) >= 2 else 'numpy.core.multiarray')
    found = [multiarray._reconstruct, multiarray.scalar, np.ndarray, np.dtype]
    # numpy >= 1.25 pickles some dtypes through their ``numpy.dtypes`` classes.
    dtypes = getattr(np, 'dtypes', None)
    if dtypes is not None:
        found += [type(np.dtype(t)) for t in (
            np.bool_, np.int8, np.int16, np.int32, np.int64, np.uint8, np.uint16,
            np.uint32, np.uint64, np.float16, np.float32, np.float64, np.str_, np.object_)]
    return found


def _history_buffer_getattr(obj, name):
    """``getattr`` restricted to ``HistoryBuffer``'s public methods."""
    from mmengine.logging import HistoryBuffer
    if obj is HistoryBuffer and not name.startswith('_') and callable(getattr(obj, name, None)):
        return getattr(obj, name)
    raise pickle.UnpicklingError(
        f'refusing getattr({obj!r}, {name!r}) while loading a checkpoint with '
        'weights_only=True: vmamba_mm only allows HistoryBuffer methods here')


def register_mmengine_safe_globals():
    """Allowlist the globals of mmengine checkpoints for ``torch.load`` (idempotent)."""
    global _registered
    if _registered or not hasattr(torch.serialization, 'add_safe_globals'):
        return  # already done, or torch < 2.4 (loads everything anyway)
    from mmengine.logging import HistoryBuffer
    torch.serialization.add_safe_globals(
        [HistoryBuffer, (_history_buffer_getattr, 'builtins.getattr')] + _numpy_globals())
    _registered = True
