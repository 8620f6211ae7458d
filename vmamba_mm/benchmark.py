"""What a benchmark record states about the machine and the software (for the tools)."""
import platform


def cpu_name():
    """The CPU's model name (``/proc/cpuinfo``), else what ``platform`` knows."""
    try:
        with open('/proc/cpuinfo') as f:
            for line in f:
                if line.startswith('model name'):
                    return line.split(':', 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def package_versions(names):
    """``{'python': ..., name: version}`` for ``names``; a package that does not
    import is recorded as ``'unavailable: <error type>'``, not an error."""
    out = {'python': platform.python_version()}
    for name in names:
        try:
            out[name] = __import__(name).__version__
        except Exception as e:  # noqa: BLE001  (recorded, not fatal)
            out[name] = f'unavailable: {type(e).__name__}'
    return out


def scan_backend(device='cpu'):
    """The selective scan's backend a model uses on ``device`` (the environment
    variable, else the device's default), with the C++ kernel's instruction set
    when it is the 'cpu' backend."""
    import os

    import torch

    from .ops.backend import default_backend
    name = os.environ.get('VMAMBA_MM_SCAN_BACKEND') or default_backend(
        'selective_scan', torch.device(device))
    if name != 'cpu':
        return dict(name=name)
    from .ops.selective_scan import cpu
    return dict(name=name, capability=cpu.load().capability(), flags=cpu.build_flags())
