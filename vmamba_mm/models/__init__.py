"""Backbones (registered in mmdet / mmseg / mmpretrain on import)."""
from .vmamba import VMamba  # noqa: F401,E402
from .vim import Vim  # noqa: F401,E402
from .layer_decay import VimLayerDecayOptimizerConstructor  # noqa: F401,E402
