"""vmamba_mm: VMamba and Vim backbones for OpenMMLab on one selective-scan operator.

``import vmamba_mm`` registers the models in the MODELS registries of mmdet,
mmseg and mmpretrain (whichever are installed). ``vmamba_mm.ops`` needs only torch.
"""
from importlib.util import find_spec

from . import ops  # noqa: F401

__version__ = '0.1.0'

if find_spec('mmengine') is not None:
    from . import models  # noqa: F401,E402
    from .safe_globals import register_mmengine_safe_globals  # noqa: E402

    # The training engine extends mmengine's Runner, which imports OpenCV. Without
    # OpenCV there is no Runner to extend; the backbones need mmengine alone.
    if find_spec('cv2') is not None:
        from . import engine  # noqa: F401,E402

    # torch >= 2.6 loads with weights_only=True: allow mmengine's own checkpoints
    # (resume / load_from) without a user-side environment variable.
    register_mmengine_safe_globals()
