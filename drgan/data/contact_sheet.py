"""Contact sheets: a grid of images (one row per grade, say) saved as one PNG for people to look at."""
from __future__ import annotations

from pathlib import Path

import numpy as np
from PIL import Image, ImageDraw, PngImagePlugin

from drgan.io import atomic_write_bytes
from drgan.errors import DrganError

GAP = 4          # pixels between tiles
LABEL_W = 72     # left margin holding the row labels
# The PNG text chunk that marks a sheet as this program's: a rerun replaces a sheet, never a photograph.
MARK = ("Software", "drgan contact sheet")


def is_contact_sheet(path: Path) -> bool:
    """Whether `path` is a PNG that save_contact_sheet wrote (its text chunks precede the pixels)."""
    try:
        with Image.open(path) as img:
            return img.format == "PNG" and img.text.get(MARK[0]) == MARK[1]
    except (OSError, SyntaxError, ValueError):  # not an image, or a broken one
        return False


def save_contact_sheet(rows: list[list[np.ndarray]], path: str | Path, labels: list[str] | None = None) -> Path:
    """Save rows of uint8 (H, W, 3) tiles as one PNG; tiles are scaled to the first tile's size."""
    if not rows or not any(rows):
        raise DrganError("contact sheet: no images")
    if labels is not None and len(labels) != len(rows):
        raise DrganError(f"contact sheet: {len(labels)} labels for {len(rows)} rows")
    first = next(t for row in rows for t in row)
    th, tw = first.shape[:2]
    cols = max(len(r) for r in rows)
    left = LABEL_W if labels else 0
    sheet = Image.new("RGB", (left + cols * (tw + GAP) + GAP, len(rows) * (th + GAP) + GAP), (24, 24, 24))
    draw = ImageDraw.Draw(sheet)
    for i, row in enumerate(rows):
        y = GAP + i * (th + GAP)
        if labels:
            draw.text((6, y + th // 2 - 6), labels[i], fill=(230, 230, 230))
        for j, tile in enumerate(row):
            tile = np.asarray(tile)
            if tile.dtype != np.uint8 or tile.ndim != 3 or tile.shape[2] != 3:
                raise DrganError(f"contact sheet: tile ({i}, {j}) must be uint8 (H, W, 3), got {tile.dtype} {tile.shape}")
            img = Image.fromarray(tile)
            if img.size != (tw, th):
                img = img.resize((tw, th), Image.Resampling.BILINEAR)
            sheet.paste(img, (left + GAP + j * (tw + GAP), y))
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    import io
    buf = io.BytesIO()
    info = PngImagePlugin.PngInfo()
    info.add_text(*MARK)
    sheet.save(buf, format="PNG", pnginfo=info)
    atomic_write_bytes(path, buf.getvalue())
    return path
