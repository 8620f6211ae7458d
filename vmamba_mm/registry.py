"""Registration of vmamba_mm's modules in every installed OpenMMLab task library.

``import vmamba_mm`` makes ``type='VMamba'`` (and the other modules) build in the
mmdet, mmseg and mmpretrain scopes alike, so a config needs nothing but
``custom_imports = dict(imports=['vmamba_mm'], allow_failed_imports=False)``.
A task library that is not installed is skipped; one that is installed but fails
to import raises (never a silent half-registration).
"""
import importlib
from importlib.util import find_spec

TASK_SCOPES = ('mmdet', 'mmseg', 'mmpretrain')


def _registries(name):
    regs = []
    for scope in TASK_SCOPES:
        if find_spec(scope) is None:
            continue
        regs.append(getattr(importlib.import_module(f'{scope}.registry'), name))
    return regs


def register_model(cls):
    """Class decorator: register ``cls`` in each installed task library's MODELS."""
    for reg in _registries('MODELS'):
        reg.register_module(module=cls, force=True)
    return cls


def register_optim_constructor(cls):
    """Class decorator: register in each task library's OPTIM_WRAPPER_CONSTRUCTORS."""
    for reg in _registries('OPTIM_WRAPPER_CONSTRUCTORS'):
        reg.register_module(module=cls, force=True)
    return cls
