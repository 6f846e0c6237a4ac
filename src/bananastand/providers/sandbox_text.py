"""Text layout for the sandbox's picture: faces that fit a width, lines that wrap.

Kept apart from the drawing because it is the one part with a cost that grows with the
input (a 10000-character prompt, a word without spaces): every loop here is bounded.
"""

from __future__ import annotations

import threading

from PIL import ImageFont

FontT = ImageFont.FreeTypeFont | ImageFont.ImageFont

#: More characters than any line holds at the smallest prompt face on the widest image.
_MAX_LINE_CHARS = 600

_faces = threading.local()


def face(size: int) -> FontT:
    """The default face at ``size`` px (at least 6), cached per thread: a FreeType face must
    not be used by two threads at once."""
    cache: dict[int, FontT] | None = getattr(_faces, "by_size", None)
    if cache is None:
        cache = _faces.by_size = {}
    size = max(size, 6)
    found = cache.get(size)
    if found is None:
        found = cache[size] = ImageFont.load_default(size=size)
    return found


def fit_font(text: str, max_width: float, max_size: int) -> FontT:
    """The largest face up to ``max_size`` in which ``text`` fits on one line."""
    length = face(100).getlength(text) or 1.0
    size = min(max_size, int(100 * max_width / length))
    # Hinting makes widths not quite proportional to the size; step down until it fits.
    while size > 6 and face(size).getlength(text) > max_width:
        size -= 1
    return face(size)


def truncate(text: str, font: FontT, max_width: float) -> str:
    """``text`` cut with an ellipsis where it would run past ``max_width``."""
    if font.getlength(text) <= max_width:
        return text
    while text and font.getlength(text + "…") > max_width:
        text = text[:-1]
    return text + "…"


def _split_word(word: str, font: FontT, max_width: float, limit: int) -> list[str]:
    """Pieces of a word wider than the line (a URL, base64, CJK without spaces).

    At most ``limit`` full pieces are cut, and no line is assumed to hold more than
    ``_MAX_LINE_CHARS``, so a 10000-character word costs no more than a page of text.
    """
    pieces: list[str] = []
    while (
        len(pieces) < limit
        and len(word) > 1
        and font.getlength(word[: _MAX_LINE_CHARS + 1]) > max_width
    ):
        lo, hi = 1, min(len(word) - 1, _MAX_LINE_CHARS)
        while lo < hi:
            mid = (lo + hi + 1) // 2
            if font.getlength(word[:mid]) <= max_width:
                lo = mid
            else:
                hi = mid - 1
        pieces.append(word[:lo])
        word = word[lo:]
    pieces.append(word)
    return pieces


def wrap(text: str, font: FontT, max_width: float, max_lines: int) -> tuple[list[str], bool]:
    """Greedy word wrap that stops after ``max_lines``; says whether text was left over."""
    lines: list[str] = []
    for paragraph in text.split("\n"):
        line = ""
        for word in paragraph.split(" "):
            candidate = f"{line} {word}" if line else word
            if font.getlength(candidate) <= max_width:
                line = candidate
                continue
            if line:
                lines.append(line)
            *full, line = _split_word(word, font, max_width, max_lines + 1 - len(lines))
            lines.extend(full)
            if len(lines) > max_lines:
                return lines[:max_lines], True
        lines.append(line)
        if len(lines) > max_lines:
            return lines[:max_lines], True
    return lines, False
