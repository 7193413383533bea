"""A transfer study's two pictures for the page, in plotly (figures.study draws the same as PNG for the CLI):
validation accuracy against thaw depth, one line per training fraction with its spread over seeds and the
references (scratch, lp-ft) as dashed lines; and a depth x fraction heatmap of the mean accuracy.

Plain numbers in (training.study.figure_data gives the lines), figures out: this module knows nothing of
training."""

from __future__ import annotations

import plotly.graph_objects as go

from vislab.figures import charts

# Okabe-Ito, the order figures.study uses: a fraction has the same colour on the page and in the CLI's PNG
COLOURS = ["#0072B2", "#E69F00", "#009E73", "#CC79A7", "#D55E00", "#56B4E9"]
DEPTH_AXIS = "stages thawed below the head (0 = head only)"


def axis_title(lines: dict) -> str:
    """The depth axis says what x means for a surgical line too (the one stage trained), when there is one."""
    return DEPTH_AXIS + ("; surgical: the one stage trained" if any(k.startswith("surgical") for k in lines) else "")


def accuracy_by_depth(lines: dict[str, list[tuple[int, float, float]]], references: dict[str, list[float]],
                      title: str, depth_labels: dict[int, str] | None = None) -> go.Figure:
    """`lines`: label -> [(depth, mean, spread over seeds)], drawn with error bars; `references`: label ->
    [mean, spread, colour index], dashed across the depths (a reference has no depth of its own)."""
    fig = go.Figure()
    for i, (label, points) in enumerate(lines.items()):
        xs, ys, es = zip(*sorted(points))
        fig.add_trace(go.Scatter(
            x=list(xs), y=list(ys), error_y=dict(type="data", array=list(es), visible=True), mode="lines+markers",
            name=label, line=dict(color=COLOURS[i % len(COLOURS)], width=3,
                                  dash="dot" if label.startswith("surgical") else "solid"), marker=dict(size=9),
            hovertemplate="depth %{x}: %{y:.1%} ± %{error_y.array:.1%}<extra>" + label + "</extra>"))
    depths = sorted({d for points in lines.values() for d, _, _ in points}) or [0, 1]
    span = [depths[0], depths[-1]] if depths[0] != depths[-1] else [depths[0] - 0.5, depths[0] + 0.5]
    for label, (mean, spread, colour) in references.items():
        fig.add_trace(go.Scatter(
            x=span, y=[mean, mean], mode="lines", name=label,
            line=dict(color=COLOURS[int(colour) % len(COLOURS)], width=2, dash="dash"),
            hovertemplate=f"{label}: {mean:.1%} ± {spread:.1%}<extra></extra>"))
    labels = depth_labels or {}
    fig.update_xaxes(title=axis_title(lines), tickvals=depths, ticktext=[labels.get(d, str(d)) for d in depths])
    fig.update_yaxes(title="best validation accuracy", tickformat=".0%", range=[0, 1.05])  # error bars past 100 %: cut
    return charts._layout(fig, title, height=440)


def depth_fraction_heatmap(depths: list[int], fractions: list[float], means: list[list[float | None]],
                           title: str) -> go.Figure:
    """`means[i][j]`: mean best validation accuracy at fractions[i], depths[j] (None: not measured yet)."""
    fig = go.Figure(go.Heatmap(
        z=means, x=[str(d) for d in depths], y=[f"{f:.0%}" for f in fractions], colorscale="Cividis",
        zmin=0, zmax=1, texttemplate="%{z:.0%}", textfont=dict(size=charts.TICK_PX),
        colorbar=dict(tickformat=".0%"), hoverongaps=False,
        hovertemplate="depth %{x}, %{y} of the images: %{z:.1%}<extra></extra>"))
    fig.update_xaxes(title="stages thawed below the head", type="category")
    fig.update_yaxes(title="training images used", type="category")
    return charts._layout(fig, title, height=max(260, 70 * len(fractions) + 170))
