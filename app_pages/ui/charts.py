"""The dashboard's figures, built from typed data with fixed, honest axes (no autoscaled -1..5 on an empty chart).

Each function returns a plotly figure, or None when there is nothing to draw yet (the page then says so in words).
"""

from __future__ import annotations

from collections.abc import Sequence

import plotly.graph_objects as go
from plotly.subplots import make_subplots

from tl_core.formats import PLOTLY_PERCENT, PLOTLY_PERCENT_HOVER, percent
from tl_core.train.events import EpochRow

ACC_RANGE = [0, 1.02]
STEP_SMOOTHING = 0.9  # like TensorBoard's slider: each smoothed point keeps 90% of the one before


def smooth(values: Sequence[float], weight: float = STEP_SMOOTHING) -> list[float]:
    """Exponential moving average, debiased so the first points are not dragged towards zero."""
    out, avg = [], 0.0
    for i, v in enumerate(values, start=1):
        avg = weight * avg + (1 - weight) * v
        out.append(avg / (1 - weight**i))
    return out


def _epoch_axis(fig: go.Figure, epochs: int) -> None:
    """Whole epochs from 0 to the planned number: the curves grow across a fixed axis."""
    last = max(epochs, 1)
    fig.update_xaxes(title_text="epoch", range=[0, last + 0.2], dtick=1 if last <= 20 else None, tick0=0)


CURVE_POINTS = 400


def training_curves(history: Sequence[EpochRow], step_losses: Sequence[tuple[float, float]], epochs: int) -> go.Figure | None:
    """Loss (per step, smoothed, plus per epoch) and accuracy (per epoch, 0-100%) of a run; None before any step."""
    if not history and not step_losses:
        return None
    fig = make_subplots(rows=1, cols=2, subplot_titles=("Loss", "Accuracy"))
    if step_losses:
        xs, ys = zip(*step_losses)
        every = max(1, len(xs) // CURVE_POINTS)  # a chart 600 px wide shows no more; fewer points, less to send
        fig.add_trace(go.Scatter(x=xs[::every], y=ys[::every], name="train loss (each step)", mode="lines", opacity=0.25,
                                 line={"color": "#1f77b4", "width": 1}, hoverinfo="skip"), row=1, col=1)
        fig.add_trace(go.Scatter(x=xs[::every], y=smooth(ys)[::every], name="train loss (smoothed)", mode="lines",
                                 line={"color": "#1f77b4", "width": 2}, hovertemplate="%{y:.3f}"), row=1, col=1)
    x = [h.epoch for h in history]
    for metric, col in (("loss", 1), ("acc", 2)):
        for split, colour, dash in (("train", "#1f77b4", "dot"), ("val", "#d62728", "solid")):
            fig.add_trace(go.Scatter(x=x, y=[getattr(h, f"{split}_{metric}") for h in history], name=f"{split} {metric} (epoch)",
                                     mode="lines+markers", line={"dash": dash, "color": colour},
                                     hovertemplate="%{y:" + (".3f" if metric == "loss" else PLOTLY_PERCENT_HOVER) + "}"),
                          row=1, col=col)
    losses = [y for _, y in step_losses] + [v for h in history for v in (h.train_loss, h.val_loss)]
    fig.update_yaxes(title_text="loss", range=[0, max(losses) * 1.1 or 1], row=1, col=1)
    fig.update_yaxes(title_text="accuracy", range=ACC_RANGE, tickformat=PLOTLY_PERCENT, row=1, col=2)
    _epoch_axis(fig, epochs)
    fig.update_layout(height=340, margin={"t": 60}, legend={"orientation": "h", "y": -0.25})
    return fig


def history_chart(runs: Sequence[tuple[str, Sequence[dict]]]) -> go.Figure | None:
    """Validation accuracy per epoch of the chosen runs; None when none of them finished an epoch."""
    runs = [(name, rows) for name, rows in runs if rows]
    if not runs:
        return None
    fig = go.Figure()
    for name, rows in runs:
        fig.add_trace(go.Scatter(x=[m["epoch"] for m in rows], y=[m["val_acc"] for m in rows], name=name,
                                 mode="lines+markers", hovertemplate="%{y:" + PLOTLY_PERCENT_HOVER + "}"))
    fig.update_layout(title="Validation accuracy (select rows above to compare runs)", height=320,
                      yaxis={"title": "val accuracy", "range": ACC_RANGE, "tickformat": PLOTLY_PERCENT})
    _epoch_axis(fig, max(m["epoch"] for _, rows in runs for m in rows))
    return fig


def text_colour(fraction: float) -> str:
    """White on the dark half of the Blues scale, near-black on the light half."""
    return "#ffffff" if fraction > 0.5 else "#1a1a1a"


CELL_PX = 64


def confusion_figure(classes: Sequence[str], matrix: Sequence[Sequence[int]]) -> go.Figure:
    """A square heatmap, one cell per (true, predicted) pair, sized to the classes: count and row % in each cell.

    Colour is the row-normalised share (so a small class's mistakes show as clearly as a big one's). The cells'
    text is drawn as annotations (its colour follows the cell's darkness and never fades); an invisible square
    marker on each cell takes the click that chooses which images are shown below the chart.
    """
    n = len(classes)
    rows = [sum(r) or 1 for r in matrix]
    share = [[c / rows[i] for c in r] for i, r in enumerate(matrix)]
    fig = go.Figure(go.Heatmap(z=share, x=list(classes), y=list(classes), colorscale="Blues", zmin=0, zmax=1, xgap=2, ygap=2,
                               customdata=matrix, showscale=False, hoverinfo="skip"))  # the markers below hover and click
    cells = [(i, j) for i in range(n) for j in range(n)]
    fig.add_trace(go.Scatter(x=[classes[j] for _, j in cells], y=[classes[i] for i, _ in cells], mode="markers",
                             customdata=[[matrix[i][j], share[i][j]] for i, j in cells],
                             hovertemplate="true %{y}, predicted %{x}: %{customdata[0]} images "
                                           "(%{customdata[1]:.0%} of the row)<extra></extra>",
                             marker={"symbol": "square", "size": CELL_PX - 8, "opacity": 0}, showlegend=False,
                             selected={"marker": {"opacity": 0}}, unselected={"marker": {"opacity": 0}}))
    if n <= 30:  # beyond that the numbers do not fit; the hover still has them
        for i, t in enumerate(classes):
            for j, p in enumerate(classes):
                fig.add_annotation(x=p, y=t, text=f"<b>{matrix[i][j]}</b><br>{share[i][j]:.0%}", showarrow=False,
                                   font={"color": text_colour(share[i][j]), "size": 13 if n <= 10 else 10})
    side = max(CELL_PX * n, 200)
    fig.update_xaxes(title_text="predicted", side="top", categoryorder="array", categoryarray=list(classes), showgrid=False)
    fig.update_yaxes(title_text="true", categoryorder="array", categoryarray=list(classes), autorange="reversed",
                     scaleanchor="x", constrain="domain", showgrid=False)
    fig.update_layout(width=side + 160, height=side + 140, margin={"l": 120, "r": 40, "t": 120, "b": 20},
                      clickmode="event+select", plot_bgcolor="rgba(0,0,0,0)",
                      title={"text": "Confusion matrix: click a cell to see its images", "y": 0.98})
    return fig


def topk_bars(top: Sequence[tuple[str, float]]) -> go.Figure:
    """Horizontal bars, most likely class on top, every bar labelled with its probability."""
    names, probs = [c for c, _ in top], [p for _, p in top]
    fig = go.Figure(go.Bar(x=probs, y=names, orientation="h", text=[percent(p) for p in probs], textposition="outside",
                           constraintext="none", cliponaxis=False, hovertemplate="%{y}: %{x:" + PLOTLY_PERCENT_HOVER + "}<extra></extra>"))
    fig.update_xaxes(range=[0, 1.18], tickformat=PLOTLY_PERCENT, title_text="probability")
    fig.update_yaxes(autorange="reversed")
    fig.update_layout(height=90 + 36 * len(top), margin={"t": 10, "b": 40, "l": 10, "r": 10})
    return fig
