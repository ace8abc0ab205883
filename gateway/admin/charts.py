"""Small SVG charts for the dashboard, made on the server: no script, readable on a phone."""

from __future__ import annotations

from collections.abc import Sequence

from markupsafe import Markup, escape


def sparkline(values: Sequence[float | None], *, label: str, unit: str = "",
              width: int = 120, height: int = 28) -> Markup:
    """A line over `values` (oldest first; None: no data then), with its last value as text."""
    known = [v for v in values if v is not None]
    top = max(known, default=0.0) or 1.0
    step = width / max(len(values) - 1, 1)
    points: list[str] = []
    segments: list[list[str]] = []
    for i, value in enumerate(values):
        if value is None:
            if points:
                segments.append(points)
                points = []
            continue
        points.append(f"{i * step:.1f},{height - 2 - (value / top) * (height - 4):.1f}")
    if points:
        segments.append(points)
    lines = "".join(
        f'<polyline fill="none" stroke="#276890" stroke-width="1.5" points="{" ".join(p)}"/>'
        for p in segments
    )
    if segments:  # the latest value as a dot: a single minute is no line
        x, y = segments[-1][-1].split(",")
        lines += f'<circle cx="{x}" cy="{y}" r="2" fill="#276890"/>'
    last = f"{_number(known[-1])}{unit}" if known else "-"
    title = escape(f"{label}: last {last}, highest {_number(max(known, default=0))}{unit}")
    full = width + 56  # room for the latest value, written beside the chart
    return Markup(
        f'<svg class="spark" width="{full}" height="{height}" viewBox="0 -2 {full} {height + 4}"'
        f' role="img" aria-label="{title}"><title>{title}</title>'
        f'<line x1="0" y1="{height - 1}" x2="{width}" y2="{height - 1}" stroke="#ccd"/>'
        f'{lines}<text x="{width + 6}" y="{height - 8}" font-size="11" fill="#333">'
        f"{escape(last)}</text></svg>"
    )


def _number(value: float) -> str:
    return f"{value:.0f}" if value >= 10 or value == int(value) else f"{value:.1f}"
