"""The evaluation's pictures, drawn with PIL: a contact sheet per prompt and the centre plot (L&R Fig. 1).

- Contact sheet: one row per method, one column per seed (the same seeds side by side), each
  cell the method's image for that prompt and seed (grey where it has none), at most
  ``CELL`` pixels a side.
- Centre plot: one panel per method, L&R Fig. 1's map (a Gaussian of fixed variance at each
  centre, summed and normalised: :func:`metrics.centre_density`) with the centres as dots, and
  the spread sigma^2 in the title.
"""

from __future__ import annotations

import re
from pathlib import Path

import numpy as np
import torch

from .metrics import centre_density

CELL, LABEL, HEADER, PANEL = 256, 160, 28, 256
BACKGROUND, INK, EMPTY = (255, 255, 255), (20, 20, 20), (200, 200, 200)
# Viridis at five stops, for the density maps.
COLOURS = np.array([(68, 1, 84), (59, 82, 139), (33, 145, 140), (94, 201, 98), (253, 231, 37)], dtype=np.float64)


def _font(size: int = 14):
    from PIL import ImageFont

    try:
        return ImageFont.load_default(size=size)
    except (TypeError, OSError):  # Pillow without FreeType: the bitmap font
        return ImageFont.load_default()


def slug(text: str) -> str:
    """A file-name part for a prompt template: ``a {} on a beach`` -> ``a_on_a_beach``."""
    return re.sub(r"[^a-z0-9]+", "_", text.lower()).strip("_")[:60] or "prompt"


def contact_sheet(title: str, rows: list[tuple[str, dict[int, Path]]], seeds: list[int], path: Path) -> Path:
    """Write one prompt's sheet: ``rows`` of (method, {seed: image file}), columns ``seeds``."""
    from PIL import Image, ImageDraw

    first = next(p for _, images in rows for p in images.values())
    with Image.open(first) as picture:
        width, height = picture.size
    scale = min(1.0, CELL / max(width, height))
    cell = (max(1, round(width * scale)), max(1, round(height * scale)))
    sheet = Image.new("RGB", (LABEL + cell[0] * len(seeds), 2 * HEADER + cell[1] * len(rows)), BACKGROUND)
    draw, font = ImageDraw.Draw(sheet), _font()
    draw.text((6, 6), title, fill=INK, font=font)
    for column, seed in enumerate(seeds):
        draw.text((LABEL + column * cell[0] + 6, HEADER + 6), f"seed {seed}", fill=INK, font=font)
    for row, (name, images) in enumerate(rows):
        top = 2 * HEADER + row * cell[1]
        draw.text((6, top + cell[1] // 2 - 7), name[:22], fill=INK, font=font)
        for column, seed in enumerate(seeds):
            box = (LABEL + column * cell[0], top)
            if seed in images:
                with Image.open(images[seed]) as picture:
                    sheet.paste(picture.convert("RGB").resize(cell, Image.Resampling.LANCZOS), box)
            else:
                draw.rectangle((*box, box[0] + cell[0] - 1, box[1] + cell[1] - 1), fill=EMPTY)
    path.parent.mkdir(parents=True, exist_ok=True)
    sheet.save(path)
    return path


def colour(values: np.ndarray) -> np.ndarray:
    """Values in [0, 1] ``[H, W]`` to RGB ``uint8 [H, W, 3]`` along :data:`COLOURS`."""
    position = np.clip(values, 0, 1) * (len(COLOURS) - 1)
    low = np.minimum(np.floor(position).astype(int), len(COLOURS) - 2)
    t = (position - low)[..., None]
    return np.round(COLOURS[low] * (1 - t) + COLOURS[low + 1] * t).astype(np.uint8)


def centre_plot(panels: list[tuple[str, torch.Tensor, float | None]], path: Path) -> Path:
    """Write the centre plot: ``panels`` of (method, centres ``[N, 2]`` (x, y) in [0, 1], spread)."""
    from PIL import Image, ImageDraw

    plot = Image.new("RGB", (PANEL * len(panels), PANEL + 2 * HEADER), BACKGROUND)
    draw, font = ImageDraw.Draw(plot), _font()
    for k, (name, centres, spread) in enumerate(panels):
        left = k * PANEL
        density = centre_density(centres, size=PANEL).numpy()
        plot.paste(Image.fromarray(colour(density)), (left, 2 * HEADER))
        for x, y in centres.tolist():
            cx, cy = left + x * PANEL, 2 * HEADER + y * PANEL
            draw.ellipse((cx - 3, cy - 3, cx + 3, cy + 3), fill=(255, 255, 255), outline=(0, 0, 0))
        draw.rectangle((left, 2 * HEADER, left + PANEL - 1, 2 * HEADER + PANEL - 1), outline=INK)
        draw.text((left + 6, 4), name[:30], fill=INK, font=font)
        spread_text = "no centre" if spread is None else f"sigma^2 = {spread:.4f}"
        draw.text((left + 6, HEADER + 2), f"{spread_text}, n = {len(centres)}", fill=INK, font=font)
    path.parent.mkdir(parents=True, exist_ok=True)
    plot.save(path)
    return path
