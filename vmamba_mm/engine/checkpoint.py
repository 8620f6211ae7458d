"""Checkpoint files that survive crashes, and checks that a checkpoint fits a model.

- :func:`atomic_replace` puts a finished temporary file in place with
  ``os.replace`` (atomic on POSIX within one folder) after flushing it to disk:
  a reader sees the old file or the complete new one, never a half-written one.
- :func:`checkpoint_problem` tells whether a ``torch.save`` file is complete
  (zip central directory, every member's CRC) without unpickling it.
- :func:`resume_candidates` lists, newest first, the checkpoints an automatic
  ``--resume`` may use.
- :func:`state_dict_mismatch` compares a checkpoint's state dict with a model's.
"""
import glob
import os
import os.path as osp
import re
import zipfile

import torch

# Keys a checkpoint may lack or carry beyond the model without failing the
# strict check of tools/test.py: BatchNorm's step counters (not used at test
# time) and the data preprocessor's buffers (mean / std come from the config).
STRICT_ALLOWANCE = (re.compile(r'(^|\.)num_batches_tracked$'), re.compile(r'^data_preprocessor\.'))


def fsync_dir(folder):
    """Flush a folder's entries (a rename) to disk; a no-op where unsupported."""
    try:
        fd = os.open(folder, os.O_RDONLY)
    except OSError:
        return
    try:
        os.fsync(fd)
    except OSError:
        pass
    finally:
        os.close(fd)


def atomic_replace(tmp_path, path):
    """Flush ``tmp_path`` to disk and rename it to ``path`` (same folder)."""
    with open(tmp_path, 'rb') as f:
        os.fsync(f.fileno())
    os.replace(tmp_path, path)
    fsync_dir(osp.dirname(osp.abspath(path)))


def atomic_write_text(path, text):
    """Write a small text file through a temporary file and :func:`atomic_replace`."""
    tmp = osp.join(osp.dirname(osp.abspath(path)), f'.{osp.basename(path)}.tmp')
    with open(tmp, 'w') as f:
        f.write(text)
    atomic_replace(tmp, path)


def checkpoint_problem(path):
    """Why ``path`` is not a complete ``torch.save`` file, or None if it is.

    Reads the whole file and checks every zip member's CRC (what a kill while
    saving, a full disk or a truncated copy breaks), without unpickling. Files
    of torch's legacy (pre-1.6, non-zip) format cannot be checked this way and
    are accepted.
    """
    if not osp.exists(path):
        return 'file does not exist'
    if not osp.isfile(path):
        return 'not a file'
    with open(path, 'rb') as f:
        head = f.read(4)
    if head[:1] == b'\x80':  # a pickle stream: torch's legacy format
        return None
    if head != b'PK\x03\x04':
        return f'not a torch checkpoint (starts with {head!r}; size {osp.getsize(path)} bytes)'
    try:
        with zipfile.ZipFile(path) as zf:
            names = zf.namelist()
            if not any(n.endswith('/data.pkl') or n == 'data.pkl' for n in names):
                return 'not a torch checkpoint (no data.pkl in the archive)'
            bad = zf.testzip()
    except (zipfile.BadZipFile, OSError, EOFError, ValueError) as e:
        return f'unreadable ({type(e).__name__}: {e}; size {osp.getsize(path)} bytes)'
    if bad is not None:
        return f'corrupt member {bad!r} (CRC mismatch)'
    return None


def _step(path):
    m = re.search(r'_(\d+)\.pth$', osp.basename(path))
    return int(m.group(1)) if m else -1


def resume_candidates(work_dir):
    """Checkpoints to try for an automatic resume, newest first.

    The file named in ``<work_dir>/last_checkpoint`` (if any), then the
    ``epoch_<n>.pth`` / ``iter_<n>.pth`` files of ``work_dir``, highest ``n``
    first (mmengine's CheckpointHook names), each path once.

    Returns:
        tuple[list[str], str | None]: the candidates, and the path named in
        ``last_checkpoint`` (None when that file is absent or empty).
    """
    named = None
    pointer = osp.join(work_dir, 'last_checkpoint')
    if osp.isfile(pointer):
        with open(pointer) as f:
            named = f.read().strip() or None
    found = glob.glob(osp.join(work_dir, 'epoch_*.pth')) + glob.glob(osp.join(work_dir, 'iter_*.pth'))
    found.sort(key=lambda p: (_step(p), osp.getmtime(p)), reverse=True)
    out = [named] if named else []
    out += [p for p in found if not named or osp.abspath(p) != osp.abspath(named)]
    return out, named


def _allowed(key):
    return any(p.search(key) for p in STRICT_ALLOWANCE)


def state_dict_mismatch(model_state, ckpt_state):
    """Missing, unexpected and mis-shaped keys beyond :data:`STRICT_ALLOWANCE`.

    Args:
        model_state (dict[str, Tensor]): the model's ``state_dict()``.
        ckpt_state (dict[str, Tensor]): the checkpoint's (``module.`` prefixes removed).

    Returns:
        dict: ``missing`` / ``unexpected`` (lists of keys) and ``shape`` (list of
        ``'key: checkpoint (..) vs model (..)'``).
    """
    missing = [k for k in model_state if k not in ckpt_state and not _allowed(k)]
    unexpected = [k for k in ckpt_state if k not in model_state and not _allowed(k)]
    shape = [f'{k}: checkpoint {tuple(v.shape)} vs model {tuple(model_state[k].shape)}'
             for k, v in ckpt_state.items()
             if k in model_state and isinstance(v, torch.Tensor)
             and tuple(v.shape) != tuple(model_state[k].shape)]
    return dict(missing=missing, unexpected=unexpected, shape=shape)


def format_mismatch(mismatch, limit=20):
    """Human-readable lines for :func:`state_dict_mismatch`'s result ('' if none)."""
    lines = []
    for what in ('missing', 'unexpected', 'shape'):
        items = mismatch[what]
        if items:
            title = {'missing': 'missing in the checkpoint', 'unexpected': 'not in the model',
                     'shape': 'shape mismatch'}[what]
            more = f' (first {limit})' if len(items) > limit else ''
            lines.append(f'{len(items)} keys {title}{more}:\n    ' + '\n    '.join(items[:limit]))
    return '\n  '.join(lines)
