"""Draw a small tissue-like whole-slide image for the demo: a pyramidal tiled TIFF OpenSlide opens."""

from __future__ import annotations

from pathlib import Path

import numpy as np
from PIL import Image

from pathology.pyramid import write_pyramid

DEMO_SIDE = 2048
DEMO_MPP = 0.5


def tissue(side: int, seed: int = 7) -> Image.Image:
    """Return an H&E-looking picture: pink stroma in a lobed outline, purple nuclei, white glass around it."""
    rng = np.random.default_rng(seed)
    y, x = np.mgrid[0:side, 0:side].astype(np.float32) / side
    angle = np.arctan2(y - 0.5, x - 0.5)
    radius = np.hypot(x - 0.5, y - 0.5)
    edge = 0.36 + 0.05 * np.sin(5 * angle + seed) + 0.03 * np.sin(11 * angle)
    inside = radius < edge
    texture = 0.5 + 0.25 * np.sin(40 * x + 7 * np.sin(9 * y)) + 0.25 * np.sin(33 * y + 5 * np.cos(7 * x))
    image = np.full((side, side, 3), 246, dtype=np.float32)
    stroma = np.stack([232 - 30 * texture, 150 - 40 * texture, 190 - 25 * texture], axis=-1)
    image[inside] = stroma[inside]
    nuclei = np.zeros((side, side), dtype=bool)
    count = side * side // 900
    centres = rng.integers(0, side, size=(count, 2))
    for cy, cx in centres:
        if not inside[cy, cx]:
            continue
        r = int(rng.integers(3, 7))
        top, bottom, left, right = max(cy - r, 0), min(cy + r, side), max(cx - r, 0), min(cx + r, side)
        yy, xx = np.ogrid[top:bottom, left:right]
        nuclei[top:bottom, left:right] |= (yy - cy) ** 2 + (xx - cx) ** 2 <= r * r
    image[nuclei] = (92, 52, 140)
    noise = rng.normal(0, 4, size=image.shape)
    return Image.fromarray(np.clip(image + noise, 0, 255).astype(np.uint8), "RGB")


def write_demo_slide(target: Path, *, side: int = DEMO_SIDE, seed: int = 7) -> Path:
    """Write a pyramidal tiled TIFF (256 px JPEG tiles, 0.5 µm per pixel) of ``tissue`` to ``target``.

    Raises OSError when the file cannot be written.
    """
    picture = tissue(side, seed)

    def read(left: int, top: int, width: int, height: int) -> Image.Image:
        return picture.crop((left, top, left + width, top + height))

    write_pyramid(read, (side, side), target, mpp=(DEMO_MPP, DEMO_MPP))
    return target
