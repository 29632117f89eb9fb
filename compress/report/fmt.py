"""How the report writes a number: one place, so the markdown, the html and the findings agree to the digit."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

NONE = "—"  # a value that was not measured


def fmt(spec: str) -> Callable[[Any], str]:
    return lambda value: format(value, spec)


def signed(points: float) -> str:
    """'+1.2' / '-0.4'; a difference that rounds to zero is '0.0', never '-0.0'."""
    rounded = round(points, 1)
    return "0.0" if rounded == 0 else f"{rounded:+.1f}"


def pct(fraction: float) -> str:
    return f"{100 * fraction:.1f}%"


def ms(value: float) -> str:
    """Three significant digits with trailing zeros kept ('4.00', '0.245'), so a column lines up."""
    return f"{value:.0f}" if value >= 100 else format(value, "#.3g")


def spread(value: tuple[float | None, int]) -> str:
    """A table row's accuracy over seeds: '± 0.8 (n=3)' (sample sd, points); one seed has none: '— (n=1)'."""
    sd, seeds = value
    return f"{NONE if sd is None else f'± {sd:.1f}'} (n={seeds})"


def count(n: float) -> str:
    """700000 -> '700K', 2240000 -> '2.24M'."""
    return f"{n / 1e6:.2f}M" if n >= 1e6 else f"{n / 1e3:.0f}K"
