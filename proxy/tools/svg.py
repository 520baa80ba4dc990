"""Small inline-SVG bar charts for the HTML report: no library, no script, no network.

Each chart is one ``<svg class="chart">`` with a ``<rect class="bar">`` per non-zero value (tests count them),
axis labels, and a legend. Values are scaled to the largest total; a label is thinned out when there are more
bars than fit.
"""

from __future__ import annotations

import html

DENIED = "#d62728"  # every series that is a denial, and nothing else
PALETTE = ("#1f77b4", "#2ca02c", "#ff7f0e", "#9467bd", "#8c564b", "#e377c2", "#7f7f7f", "#bcbd22",
           "#17becf", "#393b79", "#637939", "#8c6d31", "#843c39")
WIDTH, HEIGHT, LEFT, BOTTOM, TOP = 960, 260, 50, 60, 30


def stacked_bars(series: list[tuple[str, list[int]]], legend: list[str], title: str) -> str:
    """One bar per (label, values): the values stacked in legend order."""
    peak = max((sum(values) for _, values in series), default=0) or 1
    slot = (WIDTH - LEFT - 10) / max(1, len(series))
    every = max(1, int(len(series) / 20) + (len(series) % 20 > 0))  # at most ~20 axis labels
    parts: list[str] = []
    for index, (label, values) in enumerate(series):
        x = LEFT + index * slot
        y: float = HEIGHT - BOTTOM
        for color_index, value in enumerate(values):
            if value <= 0:
                continue
            height = value / peak * (HEIGHT - BOTTOM - TOP)
            y -= height
            parts.append(_rect(x + slot * 0.1, y, slot * 0.8, height, colour(legend[color_index], color_index),
                               f"{label} {legend[color_index]}: {value}"))
        if index % every == 0:
            parts.append(f'<text x="{x + slot / 2:.1f}" y="{HEIGHT - BOTTOM + 12}" text-anchor="end" '
                         f'transform="rotate(-30 {x + slot / 2:.1f} {HEIGHT - BOTTOM + 12})">'
                         f"{html.escape(label[-11:])}</text>")
    return _frame(title, parts, peak, legend)


def grouped_bars(series: list[tuple[str, list[int]]], legend: list[str], title: str) -> str:
    """One group per label, one bar per legend entry side by side."""
    peak = max((max(values, default=0) for _, values in series), default=0) or 1
    slot = (WIDTH - LEFT - 10) / max(1, len(series))
    width = slot * 0.8 / max(1, len(legend))
    parts: list[str] = []
    for index, (label, values) in enumerate(series):
        x = LEFT + index * slot + slot * 0.1
        for color_index, value in enumerate(values):
            if value <= 0:
                continue
            height = value / peak * (HEIGHT - BOTTOM - TOP)
            parts.append(_rect(x + color_index * width, HEIGHT - BOTTOM - height, width * 0.9, height,
                               colour(legend[color_index], color_index), f"{label} {legend[color_index]}: {value}"))
        parts.append(f'<text x="{x + slot * 0.4:.1f}" y="{HEIGHT - BOTTOM + 14}" text-anchor="middle">'
                     f"{html.escape(label[:30])}</text>")
    return _frame(title, parts, peak, legend)


def colour(name: str, index: int) -> str:
    """Red for denials (a category or series named so), the palette otherwise."""
    if "denied" in name.lower():
        return DENIED
    return PALETTE[index % len(PALETTE)]


def _rect(x: float, y: float, width: float, height: float, color: str, tip: str) -> str:
    return (f'<rect class="bar" x="{x:.1f}" y="{y:.1f}" width="{max(width, 1):.1f}" height="{max(height, 1):.1f}" '
            f'fill="{color}"><title>{html.escape(tip)}</title></rect>')


def _frame(title: str, parts: list[str], peak: int, legend: list[str]) -> str:
    axis = (f'<line x1="{LEFT}" y1="{TOP}" x2="{LEFT}" y2="{HEIGHT - BOTTOM}" stroke="#888"/>'
            f'<line x1="{LEFT}" y1="{HEIGHT - BOTTOM}" x2="{WIDTH - 10}" y2="{HEIGHT - BOTTOM}" stroke="#888"/>'
            f'<text x="{LEFT - 4}" y="{TOP + 4}" text-anchor="end">{peak}</text>'
            f'<text x="{LEFT - 4}" y="{HEIGHT - BOTTOM}" text-anchor="end">0</text>')
    keys = "".join(
        f'<g transform="translate({LEFT + (i % 3) * 300},{HEIGHT + 4 + (i // 3) * 16})">'
        f'<rect width="10" height="10" fill="{colour(name, i)}"/>'
        f'<text x="14" y="9">{html.escape(name)}</text></g>' for i, name in enumerate(legend))
    rows = (len(legend) + 2) // 3
    return (f'<svg class="chart" xmlns="http://www.w3.org/2000/svg" width="{WIDTH}" '
            f'height="{HEIGHT + 10 + rows * 16}" role="img" aria-label="{html.escape(title)}">'
            f'<text x="{LEFT}" y="16" style="font-size:14px;font-weight:bold">{html.escape(title)}</text>'
            f"{axis}{''.join(parts)}{keys}</svg>")
