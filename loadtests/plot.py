"""A dependency-free PNG chart of throughput and latency against offered load (docs/bench.png).

Raster drawing on an RGB buffer with a built-in 5x7 pixel font, encoded with zlib: enough for
two line charts with axes, ticks and a legend, without pulling matplotlib into the project.
"""

from __future__ import annotations

import math
import struct
import zlib
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

Color = tuple[int, int, int]
WHITE: Color = (255, 255, 255)
BLACK: Color = (30, 30, 30)
GRID: Color = (225, 225, 225)
GREY: Color = (150, 150, 150)
BLUE: Color = (31, 119, 180)
ORANGE: Color = (230, 120, 20)
RED: Color = (200, 40, 40)

# 5x7 glyphs, one int per row (top first), bit 4 = leftmost pixel. Lower case draws as upper.
_FONT: dict[str, tuple[int, ...]] = {
    " ": (0, 0, 0, 0, 0, 0, 0),
    "0": (14, 17, 19, 21, 25, 17, 14), "1": (4, 12, 4, 4, 4, 4, 14), "2": (14, 17, 1, 2, 4, 8, 31),
    "3": (31, 2, 4, 2, 1, 17, 14), "4": (2, 6, 10, 18, 31, 2, 2), "5": (31, 16, 30, 1, 1, 17, 14),
    "6": (6, 8, 16, 30, 17, 17, 14), "7": (31, 1, 2, 4, 8, 8, 8), "8": (14, 17, 17, 14, 17, 17, 14),
    "9": (14, 17, 17, 15, 1, 2, 12),
    "A": (14, 17, 17, 31, 17, 17, 17), "B": (30, 17, 17, 30, 17, 17, 30), "C": (14, 17, 16, 16, 16, 17, 14),
    "D": (28, 18, 17, 17, 17, 18, 28), "E": (31, 16, 16, 30, 16, 16, 31), "F": (31, 16, 16, 30, 16, 16, 16),
    "G": (14, 17, 16, 23, 17, 17, 15), "H": (17, 17, 17, 31, 17, 17, 17), "I": (14, 4, 4, 4, 4, 4, 14),
    "J": (7, 2, 2, 2, 2, 18, 12), "K": (17, 18, 20, 24, 20, 18, 17), "L": (16, 16, 16, 16, 16, 16, 31),
    "M": (17, 27, 21, 21, 17, 17, 17), "N": (17, 17, 25, 21, 19, 17, 17), "O": (14, 17, 17, 17, 17, 17, 14),
    "P": (30, 17, 17, 30, 16, 16, 16), "Q": (14, 17, 17, 17, 21, 18, 13), "R": (30, 17, 17, 30, 20, 18, 17),
    "S": (15, 16, 16, 14, 1, 1, 30), "T": (31, 4, 4, 4, 4, 4, 4), "U": (17, 17, 17, 17, 17, 17, 14),
    "V": (17, 17, 17, 17, 17, 10, 4), "W": (17, 17, 17, 21, 21, 21, 10), "X": (17, 17, 10, 4, 10, 17, 17),
    "Y": (17, 17, 17, 10, 4, 4, 4), "Z": (31, 1, 2, 4, 8, 16, 31),
    ".": (0, 0, 0, 0, 0, 12, 12), ",": (0, 0, 0, 0, 12, 4, 8), "-": (0, 0, 0, 31, 0, 0, 0),
    "/": (1, 2, 2, 4, 8, 8, 16), "%": (24, 25, 2, 4, 8, 19, 3), "(": (2, 4, 8, 8, 8, 4, 2),
    ")": (8, 4, 2, 2, 2, 4, 8), ":": (0, 12, 12, 0, 12, 12, 0), "=": (0, 0, 31, 0, 31, 0, 0),
    "+": (0, 4, 4, 31, 4, 4, 0), "<": (2, 4, 8, 16, 8, 4, 2), ">": (8, 4, 2, 1, 2, 4, 8),
}


class Canvas:
    def __init__(self, width: int, height: int) -> None:
        self.width, self.height = width, height
        self.pixels = bytearray(bytes(WHITE) * (width * height))

    def dot(self, x: int, y: int, color: Color, size: int = 1) -> None:
        for dy in range(size):
            for dx in range(size):
                px, py = x + dx - size // 2, y + dy - size // 2
                if 0 <= px < self.width and 0 <= py < self.height:
                    i = (py * self.width + px) * 3
                    self.pixels[i : i + 3] = bytes(color)

    def line(self, x0: float, y0: float, x1: float, y1: float, color: Color, width: int = 1, dash: int = 0) -> None:
        steps = max(1, int(max(abs(x1 - x0), abs(y1 - y0))))
        for s in range(steps + 1):
            if dash and (s // dash) % 2:
                continue
            t = s / steps
            self.dot(round(x0 + (x1 - x0) * t), round(y0 + (y1 - y0) * t), color, width)

    def fill(self, x0: float, y0: float, x1: float, y1: float, color: Color) -> None:
        row = bytes(color) * max(0, round(x1) - round(x0))
        for y in range(max(0, round(y0)), min(self.height, round(y1))):
            i = (y * self.width + round(x0)) * 3
            self.pixels[i : i + len(row)] = row

    def circle(self, cx: float, cy: float, r: int, color: Color) -> None:
        for dy in range(-r, r + 1):
            for dx in range(-r, r + 1):
                if dx * dx + dy * dy <= r * r:
                    self.dot(round(cx) + dx, round(cy) + dy, color)

    def text(self, x: float, y: float, text: str, color: Color = BLACK, scale: int = 2, anchor: str = "left") -> None:
        width = len(text) * 6 * scale
        x0 = x - width if anchor == "right" else x - width / 2 if anchor == "center" else x
        for n, char in enumerate(text.upper()):
            rows = _FONT.get(char, _FONT[" "])
            for row, bits in enumerate(rows):
                for col in range(5):
                    if bits & (16 >> col):
                        for sy in range(scale):
                            for sx in range(scale):
                                self.dot(round(x0) + (n * 6 + col) * scale + sx, round(y) + row * scale + sy, color)

    def png(self) -> bytes:
        raw = b"".join(
            b"\x00" + bytes(self.pixels[y * self.width * 3 : (y + 1) * self.width * 3]) for y in range(self.height)
        )

        def chunk(kind: bytes, data: bytes) -> bytes:
            return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data) & 0xFFFFFFFF)

        header = struct.pack(">IIBBBBB", self.width, self.height, 8, 2, 0, 0, 0)
        return b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", header) + chunk(b"IDAT", zlib.compress(raw, 9)) + chunk(b"IEND", b"")


def nice_ticks(high: float, count: int = 5) -> list[float]:
    """0 .. >= high in 1/2/5 x 10^k steps."""
    if high <= 0:
        return [0.0, 1.0]
    raw = high / count
    magnitude = 10 ** math.floor(math.log10(raw))
    step = next(m * magnitude for m in (1, 2, 5, 10) if m * magnitude >= raw)
    return [i * step for i in range(int(math.ceil(high / step)) + 1)]


def label(value: float) -> str:
    if value >= 1000:
        thousands = value / 1000
        return f"{thousands:.0f}K" if thousands == int(thousands) else f"{thousands:.1f}K"
    return f"{value:.0f}" if value == int(value) else f"{value:.1f}"


@dataclass
class Series:
    name: str
    points: Sequence[tuple[float, float]]
    color: Color
    dash: int = 0
    markers: bool = True


def panel(canvas: Canvas, left: int, top: int, width: int, height: int, title: str, xlabel: str,
          series: Sequence[Series], ymax: float | None = None) -> None:
    xs = [x for s in series for x, _ in s.points] or [1.0]
    ys = [y for s in series for _, y in s.points] or [1.0]
    xticks, yticks = nice_ticks(max(xs)), nice_ticks(ymax or max(ys) * 1.1)
    x_hi, y_hi = xticks[-1], yticks[-1]

    def px(x: float) -> float:
        return left + x / x_hi * width

    def py(y: float) -> float:
        return top + height - min(y, y_hi) / y_hi * height

    canvas.text(left + width / 2, top - 34, title, anchor="center")
    for t in yticks:
        canvas.line(left, py(t), left + width, py(t), GRID)
        canvas.text(left - 8, py(t) - 7, label(t), GREY, anchor="right")
    for t in xticks:
        canvas.line(px(t), top, px(t), top + height, GRID)
        canvas.text(px(t), top + height + 8, label(t), GREY, anchor="center")
    canvas.line(left, top, left, top + height, BLACK, 2)
    canvas.line(left, top + height, left + width, top + height, BLACK, 2)
    canvas.text(left + width / 2, top + height + 30, xlabel, anchor="center")
    for s in series:
        for (x0, y0), (x1, y1) in zip(s.points, s.points[1:], strict=False):
            canvas.line(px(x0), py(y0), px(x1), py(y1), s.color, 2, s.dash)
        if s.markers:
            for x, y in s.points:
                canvas.circle(px(x), py(y), 4, s.color)
    longest = max((len(s.name) for s in series), default=0)
    canvas.fill(left + 6, top + 4, left + 50 + longest * 12, top + 8 + len(series) * 20, WHITE)
    for n, s in enumerate(series):
        ly = top + 8 + n * 20
        canvas.line(left + 12, ly + 6, left + 36, ly + 6, s.color, 3, s.dash)
        canvas.text(left + 42, ly, s.name, s.color)


def bench_plot(points: Sequence[dict[str, float]], max_rate: float, p99_target_ms: float, path: Path, caption: str) -> None:
    """Throughput and latency against offered load; `points` are the e2e measurements."""
    offered = [float(p["offered_events_per_s"]) for p in points]
    top_x = max([*offered, max_rate]) * 1.02
    canvas = Canvas(1200, 560)
    panel(canvas, 110, 70, 440, 380, "THROUGHPUT (EVENTS/S)", "OFFERED LOAD (EVENTS/S)", [
        Series("DECISIONS/S", [(o, float(p["throughput_events_per_s"])) for o, p in zip(offered, points, strict=True)], BLUE),
        Series("OFFERED", [(0, 0), (top_x, top_x)], GREY, dash=6, markers=False),
        Series("WORKER MAX", [(0, max_rate), (top_x, max_rate)], RED, dash=6, markers=False),
    ], ymax=top_x * 1.05)
    lat = [(o, p) for o, p in zip(offered, points, strict=True) if p.get("p99_ms") is not None]
    panel(canvas, 710, 70, 440, 380, "END-TO-END LATENCY (MS)", "OFFERED LOAD (EVENTS/S)", [
        Series("P50", [(o, float(p["p50_ms"])) for o, p in lat], BLUE),
        Series("P99", [(o, float(p["p99_ms"])) for o, p in lat], ORANGE),
        Series("P99 TARGET", [(0, p99_target_ms), (top_x, p99_target_ms)], RED, dash=6, markers=False),
    ])
    canvas.text(600, 528, caption, GREY, anchor="center")
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(canvas.png())
