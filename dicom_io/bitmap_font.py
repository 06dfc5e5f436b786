"""A tiny 5x7 bitmap font, drawn with numpy, for text burned into summary images.

Summary images must say "RESEARCH USE ONLY" and label their colour bars in
the pixels themselves, because many viewers hide or drop header text. A
fixed bitmap font keeps the output identical on every machine and needs no
font files or imaging library.

Glyphs are 5 columns by 7 rows on a 6x9 cell (one column and two rows of
spacing, room for descenders); :func:`draw_text` scales them by an integer
factor. Characters without a glyph are drawn as ``?``.
"""

from __future__ import annotations

import numpy as np

GLYPH_WIDTH = 5
GLYPH_HEIGHT = 7
#: Horizontal advance and line height of one character at scale 1.
CELL_WIDTH = 6
CELL_HEIGHT = 9

# Each glyph: 7 rows of 5 characters, '#' for ink. Lower-case descenders
# (g, j, p, q, y) use the last row and shift up by one row of the cell.
_GLYPH_ROWS: dict[str, str] = {
    " ": ".....|.....|.....|.....|.....|.....|.....",
    "A": ".###.|#...#|#...#|#####|#...#|#...#|#...#",
    "B": "####.|#...#|#...#|####.|#...#|#...#|####.",
    "C": ".###.|#...#|#....|#....|#....|#...#|.###.",
    "D": "####.|#...#|#...#|#...#|#...#|#...#|####.",
    "E": "#####|#....|#....|####.|#....|#....|#####",
    "F": "#####|#....|#....|####.|#....|#....|#....",
    "G": ".###.|#...#|#....|#.###|#...#|#...#|.####",
    "H": "#...#|#...#|#...#|#####|#...#|#...#|#...#",
    "I": ".###.|..#..|..#..|..#..|..#..|..#..|.###.",
    "J": "..###|...#.|...#.|...#.|...#.|#..#.|.##..",
    "K": "#...#|#..#.|#.#..|##...|#.#..|#..#.|#...#",
    "L": "#....|#....|#....|#....|#....|#....|#####",
    "M": "#...#|##.##|#.#.#|#.#.#|#...#|#...#|#...#",
    "N": "#...#|#...#|##..#|#.#.#|#..##|#...#|#...#",
    "O": ".###.|#...#|#...#|#...#|#...#|#...#|.###.",
    "P": "####.|#...#|#...#|####.|#....|#....|#....",
    "Q": ".###.|#...#|#...#|#...#|#.#.#|#..#.|.##.#",
    "R": "####.|#...#|#...#|####.|#.#..|#..#.|#...#",
    "S": ".####|#....|#....|.###.|....#|....#|####.",
    "T": "#####|..#..|..#..|..#..|..#..|..#..|..#..",
    "U": "#...#|#...#|#...#|#...#|#...#|#...#|.###.",
    "V": "#...#|#...#|#...#|#...#|#...#|.#.#.|..#..",
    "W": "#...#|#...#|#...#|#.#.#|#.#.#|#.#.#|.#.#.",
    "X": "#...#|#...#|.#.#.|..#..|.#.#.|#...#|#...#",
    "Y": "#...#|#...#|.#.#.|..#..|..#..|..#..|..#..",
    "Z": "#####|....#|...#.|..#..|.#...|#....|#####",
    "a": ".....|.....|.###.|....#|.####|#...#|.####",
    "b": "#....|#....|#.##.|##..#|#...#|#...#|####.",
    "c": ".....|.....|.###.|#....|#....|#...#|.###.",
    "d": "....#|....#|.##.#|#..##|#...#|#...#|.####",
    "e": ".....|.....|.###.|#...#|#####|#....|.###.",
    "f": "..##.|.#..#|.#...|###..|.#...|.#...|.#...",
    "g": ".....|.####|#...#|#...#|.####|....#|.###.",
    "h": "#....|#....|#.##.|##..#|#...#|#...#|#...#",
    "i": "..#..|.....|.##..|..#..|..#..|..#..|.###.",
    "j": "...#.|.....|..##.|...#.|...#.|#..#.|.##..",
    "k": "#....|#....|#..#.|#.#..|##...|#.#..|#..#.",
    "l": ".##..|..#..|..#..|..#..|..#..|..#..|.###.",
    "m": ".....|.....|##.#.|#.#.#|#.#.#|#...#|#...#",
    "n": ".....|.....|#.##.|##..#|#...#|#...#|#...#",
    "o": ".....|.....|.###.|#...#|#...#|#...#|.###.",
    "p": ".....|####.|#...#|#...#|####.|#....|#....",
    "q": ".....|.##.#|#..##|#...#|.####|....#|....#",
    "r": ".....|.....|#.##.|##..#|#....|#....|#....",
    "s": ".....|.....|.###.|#....|.###.|....#|####.",
    "t": ".#...|.#...|###..|.#...|.#...|.#..#|..##.",
    "u": ".....|.....|#...#|#...#|#...#|#..##|.##.#",
    "v": ".....|.....|#...#|#...#|#...#|.#.#.|..#..",
    "w": ".....|.....|#...#|#...#|#.#.#|#.#.#|.#.#.",
    "x": ".....|.....|#...#|.#.#.|..#..|.#.#.|#...#",
    "y": ".....|#...#|#...#|#...#|.####|....#|.###.",
    "z": ".....|.....|#####|...#.|..#..|.#...|#####",
    "0": ".###.|#...#|#..##|#.#.#|##..#|#...#|.###.",
    "1": "..#..|.##..|..#..|..#..|..#..|..#..|.###.",
    "2": ".###.|#...#|....#|...#.|..#..|.#...|#####",
    "3": "#####|...#.|..#..|...#.|....#|#...#|.###.",
    "4": "...#.|..##.|.#.#.|#..#.|#####|...#.|...#.",
    "5": "#####|#....|####.|....#|....#|#...#|.###.",
    "6": "..##.|.#...|#....|####.|#...#|#...#|.###.",
    "7": "#####|....#|...#.|..#..|.#...|.#...|.#...",
    "8": ".###.|#...#|#...#|.###.|#...#|#...#|.###.",
    "9": ".###.|#...#|#...#|.####|....#|...#.|.##..",
    ".": ".....|.....|.....|.....|.....|.##..|.##..",
    ",": ".....|.....|.....|.....|.##..|..#..|.#...",
    ":": ".....|.##..|.##..|.....|.##..|.##..|.....",
    ";": ".....|.##..|.##..|.....|.##..|..#..|.#...",
    "(": "...#.|..#..|.#...|.#...|.#...|..#..|...#.",
    ")": ".#...|..#..|...#.|...#.|...#.|..#..|.#...",
    "[": ".###.|.#...|.#...|.#...|.#...|.#...|.###.",
    "]": ".###.|...#.|...#.|...#.|...#.|...#.|.###.",
    "/": ".....|....#|...#.|..#..|.#...|#....|.....",
    "-": ".....|.....|.....|#####|.....|.....|.....",
    "+": ".....|..#..|..#..|#####|..#..|..#..|.....",
    "=": ".....|.....|#####|.....|#####|.....|.....",
    "<": "...#.|..#..|.#...|#....|.#...|..#..|...#.",
    ">": ".#...|..#..|...#.|....#|...#.|..#..|.#...",
    "%": "##...|##..#|...#.|..#..|.#...|#..##|...##",
    "_": ".....|.....|.....|.....|.....|.....|#####",
    "'": "..#..|..#..|.#...|.....|.....|.....|.....",
    "!": "..#..|..#..|..#..|..#..|..#..|.....|..#..",
    "?": ".###.|#...#|....#|...#.|..#..|.....|..#..",
    "*": ".....|..#..|#.#.#|.###.|#.#.#|..#..|.....",
    "#": ".#.#.|.#.#.|#####|.#.#.|#####|.#.#.|.#.#.",
    "&": ".##..|#..#.|#.#..|.#...|#.#.#|#..#.|.##.#",
    "^": "..#..|.#.#.|#...#|.....|.....|.....|.....",
}

_DESCENDERS = frozenset("gjpqy")


def _parse(rows: str) -> np.ndarray:
    lines = rows.split("|")
    if len(lines) != GLYPH_HEIGHT or any(len(line) != GLYPH_WIDTH for line in lines):
        raise ValueError(f"malformed glyph rows {rows!r}")
    return np.array([[c == "#" for c in line] for line in lines], dtype=bool)


def _cell(char: str, rows: str) -> np.ndarray:
    """The glyph placed in its CELL_HEIGHT x CELL_WIDTH cell (descenders sit one row lower)."""
    cell = np.zeros((CELL_HEIGHT, CELL_WIDTH), dtype=bool)
    top = 2 if char in _DESCENDERS else 1
    cell[top:top + GLYPH_HEIGHT, :GLYPH_WIDTH] = _parse(rows)
    return cell


_CELLS: dict[str, np.ndarray] = {char: _cell(char, rows) for char, rows in _GLYPH_ROWS.items()}


def has_glyph(char: str) -> bool:
    """Whether ``char`` is drawn as itself (otherwise it is drawn as ``?``)."""
    return char in _CELLS


def text_mask(text: str, scale: int = 1) -> np.ndarray:
    """Boolean ink mask of one line of ``text``, ``CELL_HEIGHT*scale`` rows high."""
    if scale < 1:
        raise ValueError("scale must be a positive integer")
    if not text:
        return np.zeros((CELL_HEIGHT * scale, 0), dtype=bool)
    cells = [_CELLS.get(char, _CELLS["?"]) for char in text]
    line = np.concatenate(cells, axis=1)
    if scale > 1:
        line = np.repeat(np.repeat(line, scale, axis=0), scale, axis=1)
    return line


def text_size(text: str, scale: int = 1) -> tuple[int, int]:
    """``(height, width)`` in pixels of ``text`` drawn at ``scale``."""
    return CELL_HEIGHT * scale, CELL_WIDTH * scale * len(text)


def draw_text(
    image: np.ndarray,
    text: str,
    row: int,
    column: int,
    colour: tuple[int, int, int] | int,
    scale: int = 1,
    background: tuple[int, int, int] | int | None = None,
) -> np.ndarray:
    """Burn ``text`` into ``image`` (``(rows, columns, 3)`` RGB or ``(rows, columns)`` grey) in place.

    ``row``/``column`` is the top-left corner of the text box. With a
    ``background`` the whole box is filled first, which keeps text legible
    on any image. Text running off the image is clipped. Returns ``image``.
    """
    mask = text_mask(text, scale)
    rows, columns = image.shape[:2]
    top, left = max(row, 0), max(column, 0)
    bottom, right = min(row + mask.shape[0], rows), min(column + mask.shape[1], columns)
    if bottom <= top or right <= left:
        return image
    clipped = mask[top - row:bottom - row, left - column:right - column]
    region = image[top:bottom, left:right]
    if background is not None:
        region[...] = background
    region[clipped] = colour
    return image
