"""The pack's icon (web/icon.png, 256x256, the Registry's ``Icon``): a layout drawn by one model (the grey
frame and its horizon) and a subject retouched into it (the coloured figure), in two strokes.

Run: python tools/make_icon.py
"""

from pathlib import Path

from PIL import Image, ImageDraw

ROOT = Path(__file__).resolve().parent.parent


def icon(size: int = 256) -> Image.Image:
    scale = 4  # drawn large, then reduced: smooth edges
    s = size * scale
    img = Image.new("RGBA", (s, s), (0, 0, 0, 0))
    d = ImageDraw.Draw(img)
    d.rounded_rectangle((0, 0, s - 1, s - 1), radius=48 * scale, fill=(32, 36, 48, 255))
    m = 40 * scale
    d.rounded_rectangle((m, m, s - m, s - m), radius=18 * scale, outline=(150, 160, 180, 255), width=10 * scale)
    d.line((m + 10 * scale, int(s * 0.64), s - m - 10 * scale, int(s * 0.64)), fill=(150, 160, 180, 255),
           width=8 * scale)
    cx, cy, r = int(s * 0.56), int(s * 0.44), 34 * scale
    d.ellipse((cx - r, cy - r, cx + r, cy + r), fill=(90, 170, 255, 255))
    d.rounded_rectangle((cx - 46 * scale, cy + 30 * scale, cx + 46 * scale, int(s * 0.74)), radius=30 * scale,
                        fill=(110, 200, 140, 255))
    return img.resize((size, size), Image.LANCZOS)


if __name__ == "__main__":
    icon().save(ROOT / "web" / "icon.png", optimize=True)
