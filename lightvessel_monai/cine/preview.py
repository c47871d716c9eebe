"""Pictures of a segmented run for a person: the PNG mask of each frame and an animated GIF of the run with the mask.

The PNG masks are what the PNG path writes (``SaveImaged`` with ``scale`` 255): 8-bit, 0 background and 255 vessel,
of the frame's size. The GIF plays the run at its own frame rate, vessel pixels tinted red over the grey frame. It is
written as a palette image (Pillow's GIF writer) whose 256 colours are fixed: 128 grey levels and the same 128 levels
tinted red, so a frame is one integer array and nothing is quantised.
"""

from __future__ import annotations

import os
from functools import partial
from pathlib import Path

import numpy as np

from lightvessel_monai.files import atomic_write

__all__ = ["write_gif", "write_png_masks", "png_mask_name"]

_GREY = np.arange(128) * 2 + 1  # the grey level of palette entry i < 128
_PALETTE = np.concatenate(
    [np.stack([_GREY] * 3, 1), np.stack([128 + _GREY // 2, _GREY // 2, _GREY // 2], 1)]  # entries 128-255: red tint
).astype(np.uint8)


def png_mask_name(name: str, frame: int) -> str:
    """The PNG of frame ``frame`` (1-based, as DICOM numbers frames) of the run ``name``."""
    return f"{name}_frame{frame:03d}_seg.png"


def write_png_masks(folder: str | os.PathLike, name: str, masks: np.ndarray) -> list[str]:
    """One 0/255 PNG per mask of ``masks`` ``(T, H, W)`` (nonzero = vessel) into ``folder``; returns the paths."""
    from PIL import Image

    paths = []
    for index, mask in enumerate(np.asarray(masks)):
        picture = Image.fromarray(np.where(mask > 0, 255, 0).astype(np.uint8))
        paths.append(atomic_write(Path(folder) / png_mask_name(name, index + 1), partial(picture.save, format="PNG")))
    return paths


def write_gif(path: str | os.PathLike, frames: np.ndarray, masks: np.ndarray, frame_rate: float | None = None) -> str:
    """An animated GIF of ``frames`` ``(T, H, W)`` (grey, 0-255) with ``masks`` ``(T, H, W)`` tinted red.

    Args:
        frame_rate: frames per second to play at (the run's ``CineRate``); 15 when ``None``. GIF delays are whole
            hundredths of a second, so 15 fps plays at 66.7 ms rounded to 70 ms by most viewers.
    """
    from PIL import Image

    grey = np.clip(np.asarray(frames, dtype=np.float32), 0, 255).astype(np.uint8)
    index = (grey >> 1) + np.where(np.asarray(masks) > 0, 128, 0).astype(np.uint8)
    pictures = []
    for picture in index:
        image = Image.frombytes("P", (picture.shape[1], picture.shape[0]), np.ascontiguousarray(picture).tobytes())
        image.putpalette(_PALETTE.ravel().tolist())
        pictures.append(image)
    duration = 1000.0 / (frame_rate or 15.0)
    return atomic_write(
        path, lambda f: pictures[0].save(f, "GIF", save_all=True, append_images=pictures[1:], duration=duration, loop=0)
    )
