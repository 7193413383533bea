"""Pictures as PIL images: a captioned grid of images (for PNG downloads and slides), its captions wrapped and
shortened to their cells, a tensor as an image, and a PNG data URI (how charts send an image to the browser).
No Streamlit here."""

from __future__ import annotations

import base64
import io
import math
import re

import numpy as np
from PIL import Image, ImageDraw, ImageFont


def _font(size: int):
    try:
        return ImageFont.truetype("DejaVuSans.ttf", size)
    except OSError:
        return ImageFont.load_default(size=size)


_SEP = r"(?:[ _/-]|\.(?!\d))"  # a line may break after a space, _, / or -, and after a dot not in a number
_TOKENS = re.compile(rf"(?:(?!{_SEP}).)+{_SEP}*|{_SEP}+")


def _wrap(draw, para: str, font, width: int) -> list[tuple[int, int]]:
    """`para` wrapped to `width` pixels after separators (a token wider than a line is cut by characters):
    the (start, end) span of each line."""
    def fits(a: int, b: int) -> bool:
        return draw.textlength(para[a:b].strip(), font=font) <= width

    spans, start, pos = [], 0, 0
    for tok in _TOKENS.findall(para):
        end = pos + len(tok)
        if not fits(start, end):
            if pos > start:
                spans.append((start, pos))
                start = pos
            while not fits(start, end):  # one token wider than the cell: cut it where it overflows
                cut = start + 1
                while cut < end and fits(start, cut + 1):
                    cut += 1
                spans.append((start, cut))
                start = cut
        pos = end
    spans.append((start, len(para)))
    return spans


def _shorten(draw, text: str, font, width: int) -> str:
    """`text` on one line of `width` pixels: the name in "label: name (note)" loses its end (marked …) before
    the label does, and the note in brackets goes before the name would shrink under 6 characters."""
    def fits(t: str) -> bool:
        return draw.textlength(t, font=font) <= width

    if fits(text):
        return text
    m = re.match(r"^(\S*:\s+)?(.*?)(\s*\([^()]*\))?$", text)
    head, mid, tail = m.group(1) or "", m.group(2), m.group(3) or ""
    for note, least in ((tail, min(6, len(mid))), ("", 1)):
        for n in range(len(mid) - 1, least - 1, -1):
            if fits(head + mid[:n].rstrip() + "…" + note):
                return head + mid[:n].rstrip() + "…" + note
        if note and fits(head + mid.rstrip() + "…"):  # the whole name, the note cut
            return head + mid.rstrip() + "…"
    cut = text
    while cut and not fits(cut + "…"):
        cut = cut[:-1]
    return cut + "…"


def _fit_lines(draw, text: str, font, width: int, max_lines: int) -> list[str]:
    """`text` wrapped to `width` pixels in at most `max_lines` lines: captions never run into the next cell.
    Each of its own lines (paragraphs) keeps at least one line and the last one (a loss, a score) is shortened
    last: when lines run out, the longest earlier paragraph gives up lines first and is cut with an ellipsis
    ("pred: ankle_bo… (p=0.93)"), so the last line is always seen whole."""
    paras = text.split("\n")
    if len(paras) > max_lines:  # more paragraphs than lines: the first ones and the last
        paras = paras[:max_lines - 1] + paras[-1:]
    spans = [_wrap(draw, para, font, width) for para in paras]
    budget = [len(sp) for sp in spans]
    last = len(paras) - 1
    while sum(budget) > max_lines:
        i = max((i for i in range(len(budget)) if budget[i] > 1), key=lambda i: (i != last, budget[i], i))
        budget[i] -= 1
    out: list[str] = []
    for para, sp, k in zip(paras, spans, budget):
        out += [para[a:b].strip() for a, b in sp[:k - 1]]
        out.append(para[sp[k - 1][0]:].strip() if k == len(sp) else _shorten(draw, para[sp[k - 1][0]:].strip(),
                                                                           font, width))
    return out


def caption_px(cell: int) -> int:
    """The caption font of a grid of `cell` px images: it grows with the cell, as the page shrinks the grid."""
    return max(13, round(cell / 9))


def caption_lines(captions: list[str], cell: int, max_lines: int = 4, font_px: int | None = None) -> list[list[str]]:
    """The lines `image_grid` draws under each image (see `_fit_lines`)."""
    font = _font(font_px or caption_px(cell))
    measure = ImageDraw.Draw(Image.new("RGB", (1, 1)))
    return [_fit_lines(measure, cap, font, cell, max_lines) for cap in captions]


def image_grid(images: list[Image.Image], captions: list[str], cols: int = 4, cell: int = 180,
               colours: list[str] | None = None, max_lines: int = 4, font_px: int | None = None) -> Image.Image:
    """A captioned grid of images as one PIL image (for PNG download and slides). Each caption is wrapped to
    its cell's width (at most `max_lines` lines, its last line never cut, see `_fit_lines`). The font grows
    with the cell (cell / 9 px): the page shows the grid at its column's width, six 170 px cells in ~820 px,
    so its captions stay ~14 px on a 1280 px projector."""
    rows = max(1, math.ceil(len(images) / cols))
    font_px = font_px or caption_px(cell)
    font = _font(font_px)
    wrapped = caption_lines(captions, cell, max_lines, font_px)
    line_h = round(font_px * 1.25)
    text_h = 8 + line_h * max((len(w) for w in wrapped), default=1)
    pad = 8
    grid = Image.new("RGB", (cols * (cell + pad) + pad, rows * (cell + text_h + pad) + pad), "white")
    draw = ImageDraw.Draw(grid)
    for k, (img, lines) in enumerate(zip(images, wrapped)):
        r, c = divmod(k, cols)
        x, y = pad + c * (cell + pad), pad + r * (cell + text_h + pad)
        thumb = img.copy()
        thumb.thumbnail((cell, cell))
        grid.paste(thumb, (x + (cell - thumb.width) // 2, y + (cell - thumb.height) // 2))
        colour = colours[k] if colours else "#111111"
        for i, line in enumerate(lines):
            draw.text((x, y + cell + 4 + i * line_h), line, fill=colour, font=font)
    return grid


def to_pil(x) -> Image.Image:
    """(C, H, W) float tensor in [0, 1] -> PIL RGB image."""
    arr = (x.detach().cpu().clamp(0, 1).permute(1, 2, 0).numpy() * 255).round().astype(np.uint8)  # (H, W, C)
    return Image.fromarray(arr)


def png_data_uri(rgb: np.ndarray) -> str:
    """An (H, W, 3) uint8 image as a PNG data URI: a chart sends ~50 kB per 224 px crop instead of ~600 kB of
    JSON numbers (a Compare page of Grad-CAM panels was 2.6 MB a rerun, most of a page switch)."""
    buf = io.BytesIO()
    Image.fromarray(np.ascontiguousarray(rgb, dtype=np.uint8)).save(buf, format="PNG", optimize=False)
    return "data:image/png;base64," + base64.b64encode(buf.getvalue()).decode("ascii")
