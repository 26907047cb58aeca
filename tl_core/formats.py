"""The one way TL Studio writes each kind of number, in the dashboard and on the command line.

Accuracy and probability as a percentage with one decimal (95.4%), losses with three decimals (0.213), times in
seconds (12.3 s), and a figure that was never measured as NOT_MEASURED, never "None", "nan" or a 0. Charts and
tables use the matching plotly / Streamlit formats defined here too.
"""

from __future__ import annotations

import math

PLOTLY_PERCENT = ".0%"  # axis ticks of a 0-1 accuracy or probability
PLOTLY_PERCENT_HOVER = ".1%"
TABLE_PERCENT = "%.1f%%"  # st.column_config.NumberColumn(format=...) of values in percentage points (`points`)
TABLE_LOSS = "%.3f"
TABLE_SECONDS = "%.1f s"
NOT_MEASURED = "—"  # the cell or value of a figure not measured (yet), in every table, page and command line


def missing(x: float | None) -> bool:
    """No figure: None, or the NaN pandas puts in a numeric column for it."""
    return x is None or (isinstance(x, float) and math.isnan(x))


def figure(x: float | None, decimals: int = 1) -> str:
    """A measured figure as text (12.3), or NOT_MEASURED: the cells of a column where some rows were not measured
    (speeds of backbones never timed on this device)."""
    return NOT_MEASURED if missing(x) else f"{x:.{decimals}f}"


def percent(p: float | None) -> str:
    """Accuracy, probability, calibration error: 95.4%."""
    return NOT_MEASURED if missing(p) else f"{p:.1%}"


def loss(x: float | None) -> str:
    return NOT_MEASURED if missing(x) else f"{x:.3f}"


def seconds(s: float | None) -> str:
    """Durations: 0.42 s, 12.3 s, 754 s (no false precision on long runs)."""
    if missing(s):
        return NOT_MEASURED
    return f"{s:.2f} s" if s < 1 else f"{s:.1f} s" if s < 100 else f"{s:.0f} s"


def count(n: int, noun: str) -> str:
    """'1 backbone', '3 backbones': a count with its noun in the right number (regular plurals)."""
    return f"{n} {noun}" if n == 1 else f"{n} {noun}s"


def points(p: float | None) -> float | None:
    """0.954 -> 95.4, for a table column shown with TABLE_PERCENT (it sorts as a number)."""
    return None if p is None else round(100 * p, 1)
