"""Backbones (registered in mmdet / mmseg / mmpretrain on import)."""
