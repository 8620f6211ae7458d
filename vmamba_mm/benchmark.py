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
