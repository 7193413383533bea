"""Plotly chart builders: numbers in, figures out, sized for a projector. No Streamlit here; captioned PIL
image grids and PNG encoding are `figures.images`."""

from __future__ import annotations

import math
import re

import numpy as np
import plotly.graph_objects as go
from plotly.subplots import make_subplots

from vislab.figures.images import png_data_uri

# Okabe-Ito colours: readable by colour-blind viewers and on a projector
FROZEN, THAWED, HEAD, PARTLY = "#56B4E9", "#E69F00", "#009E73", "#CC79A7"
STATE_COLOURS = {"frozen": FROZEN, "trainable": THAWED, "new head": HEAD, "partly": PARTLY}
PHASE_COLOURS = ["rgba(86,180,233,0.12)", "rgba(230,159,0,0.12)"]
# Sizes for a projector (1280 x 720 on a wall): Streamlit's chart theme puts 12 px tick labels in the figure's
# template, which beat a layout-wide font, so every axis, legend and colour bar gets its size here explicitly.
TICK_PX, AXIS_TITLE_PX, TITLE_PX, PANEL_TITLE_PX = 14, 16, 18, 14
FONT = dict(size=15)
# a log axis labels its decades only, as powers of ten (10⁻⁴), never "2, 5" between them nor SI's "1μ"
LOG_AXIS = dict(type="log", dtick=1, exponentformat="power", showexponent="all", minorloglabels="none")
CHART_PX = 800  # a full-width chart at 1280 px with the sidebar open: what panel grids size their cells for


def _layout(fig: go.Figure, title: str, height: int = 380) -> go.Figure:
    fig.update_layout(title=dict(text=title, font=dict(size=TITLE_PX)), height=height, font=FONT,
                      margin=dict(l=50, r=20, t=60, b=50), template="plotly_white",
                      legend=dict(orientation="h", y=-0.2, font=dict(size=TICK_PX)),
                      hoverlabel=dict(font=dict(size=TICK_PX)))
    fig.update_xaxes(tickfont=dict(size=TICK_PX), title=dict(font=dict(size=AXIS_TITLE_PX)))
    fig.update_yaxes(tickfont=dict(size=TICK_PX), title=dict(font=dict(size=AXIS_TITLE_PX)))
    fig.for_each_xaxis(lambda ax: ax.update(LOG_AXIS) if ax.type == "log" else None)
    fig.for_each_yaxis(lambda ax: ax.update(LOG_AXIS) if ax.type == "log" else None)
    fig.update_traces(colorbar=dict(tickfont=dict(size=TICK_PX), title=dict(font=dict(size=TICK_PX))),
                      selector=dict(type="heatmap"))
    return fig


def _text_px(text: str, size: float, bold: bool = False) -> float:
    """About how wide `text` draws in the app's sans-serif font (Source Sans: ~0.47 em a character, bold 0.52)."""
    return len(text) * size * (0.52 if bold else 0.47)


def _clip(text: str, px: float, size: float) -> str:
    """`text` (lines split on <br>) cut with an ellipsis where a line would be wider than `px`: a subplot's
    title never runs into its neighbour's."""
    out = []
    for line in text.split("<br>"):
        most = max(4, int(px / (size * 0.5)))
        out.append(line if len(line) <= most else line[:most - 1].rstrip() + "…")
    return "<br>".join(out)


def stage_state(row: dict) -> str:
    if row["stage"] == "head":
        return "new head"
    if row["trainable"] == 0:
        return "frozen"
    return "trainable" if row["trainable"] == row["params"] else "partly"


def params_by_stage(rows: list[dict]) -> go.Figure:
    """Parameters per stage, coloured by frozen / trainable / new head."""
    fig = go.Figure()
    for state, colour in STATE_COLOURS.items():
        sel = [r for r in rows if stage_state(r) == state]
        if sel:
            fig.add_bar(x=[r["stage"] for r in sel], y=[r["params"] for r in sel], name=state,
                        marker_color=colour, hovertemplate="%{x}: %{y:,} parameters<extra></extra>")
    fig.update_xaxes(categoryorder="array", categoryarray=[r["stage"] for r in rows], tickangle=-45,
                     automargin=True)  # long stage names ("features.2") are shown whole, not clipped
    fig.update_yaxes(title="parameters", type="log" if max(r["params"] for r in rows) > 50 * max(
        1, min(r["params"] for r in rows)) else "linear")
    _layout(fig, "Parameters by stage", height=420)
    return fig.update_layout(legend=dict(orientation="h", y=1.0, yanchor="bottom", x=1, xanchor="right"))


NAME_PX, NOTE_PX = 14, 13  # stage diagram: a stage's name (bold), its size and BN mode


def _stage_label(name: str, box_px: float) -> str:
    """A stage's name for its box: whole when it fits, else broken after a dot or underscore into two lines
    (never mid-word), and cut with an ellipsis only when a part is still wider than the box."""
    if _text_px(name, NAME_PX, bold=True) <= box_px:
        return name
    cuts = [i + 1 for i, ch in enumerate(name[:-1]) if ch in "._-"]
    if cuts:  # the break that leaves the widest line narrowest
        i = min(cuts, key=lambda i: max(len(name[:i]), len(name[i:])))
        parts = [name[:i], name[i:]]
    else:
        parts = [name]
    return "<br>".join(_clip(part, box_px, NAME_PX * 1.12) for part in parts)


def stage_diagram(rows: list[dict], title: str = "") -> go.Figure:
    """The network as rows of stage boxes: colour = frozen / trainable / new head, text = BN mode. As many
    boxes a line as the longest name allows at CHART_PX (at most 10), so names and notes never overlap."""
    n = len(rows)
    bn_texts = ["BN " + "/".join(r["bn_modes"]) if r.get("bn_modes") else "no BN" for r in rows]
    need = max([_text_px(r["stage"], NAME_PX, bold=True) for r in rows]  # one line, or half a broken name
               + [_text_px(t, NOTE_PX) / 1.05 for t in bn_texts] + [60])  # a BN note may use the gap too
    plot_px = CHART_PX - 70  # less the margins
    per_line = max(1, min(n, 10, int(plot_px / (1.1 * (need + 10)))))
    if per_line < min(n, 4):  # a very long name: four a line, the name broken in two
        half = max(_text_px(r["stage"], NAME_PX, bold=True) for r in rows) / 2
        per_line = max(1, min(n, 4, int(plot_px / (1.1 * (half + 10)))))
    box_px = plot_px / (per_line * 1.1 + 0.2) - 6
    lines = math.ceil(n / per_line)
    shapes, notes = [], []  # collected as plain dicts and set once: plotly re-validates every annotation on
    for i, row in enumerate(rows):  # each add_annotation, which made this figure quadratic (1 s for 20 stages)
        col, line = i % per_line, i // per_line
        x0, y0 = col * 1.1, -line * 1.6
        state = stage_state(row)
        shapes.append(dict(type="rect", x0=x0, x1=x0 + 1, y0=y0, y1=y0 + 1, fillcolor=STATE_COLOURS[state],
                           line=dict(color="#333", width=3 if row.get("bn_modes") and "train" in row["bn_modes"]
                                     and state == "frozen" else 1)))
        label = _stage_label(row["stage"], box_px)
        two = "<br>" in label
        notes.append(dict(x=x0 + 0.5, y=y0 + (0.66 if two else 0.62), text=f"<b>{label}</b>", showarrow=False,
                          font=dict(size=NAME_PX, color="#111"), hovertext=row["stage"]))
        notes.append(dict(x=x0 + 0.5, y=y0 + (0.22 if two else 0.32), text=_short(row["params"]),
                          showarrow=False, font=dict(size=NOTE_PX, color="#111")))
        notes.append(dict(x=x0 + 0.5, y=y0 - 0.2, text=_clip(bn_texts[i], box_px * 1.08, NOTE_PX),
                          showarrow=False, font=dict(size=NOTE_PX, color="#444")))
        if col < per_line - 1 and i < n - 1:
            notes.append(dict(x=x0 + 1.1, y=y0 + 0.5, ax=x0 + 1.0, ay=y0 + 0.5, xref="x", yref="y", axref="x",
                              ayref="y", showarrow=True, arrowhead=2, text=""))
    fig = go.Figure(layout=dict(shapes=shapes, annotations=notes))
    for state, colour in STATE_COLOURS.items():  # legend entries
        fig.add_scatter(x=[None], y=[None], mode="markers", marker=dict(size=14, color=colour, symbol="square"),
                        name=state)
    fig.update_xaxes(visible=False, range=[-0.2, per_line * 1.1])
    fig.update_yaxes(visible=False, range=[-(lines - 1) * 1.6 - 0.5, 1.2], scaleanchor=None)
    _layout(fig, title or "Stages: what trains, what stays frozen", height=130 + 135 * lines)
    return fig.update_layout(legend=dict(y=-0.02, yanchor="top"), margin=dict(b=40))


def _short(n: int) -> str:
    return f"{n / 1e6:.2f}M" if n >= 1e6 else f"{n / 1e3:.1f}k" if n >= 1e3 else str(n)


def curves(metrics: list[dict]) -> go.Figure:
    """Loss and accuracy per epoch, train and validation, with training phases shaded."""
    fig = make_subplots(rows=1, cols=2, subplot_titles=("loss", "accuracy"))
    epochs = [m["epoch"] for m in metrics]
    for col, key in ((1, "loss"), (2, "acc")):
        for split, dash in (("train", "dot"), ("val", "solid")):
            fig.add_scatter(x=epochs, y=[m[f"{split}_{key}"] for m in metrics], mode="lines+markers",
                            name=f"{split} {key}", line=dict(dash=dash, width=3), row=1, col=col)
    phases = []
    for m in metrics:
        if not phases or phases[-1][0] != m["phase"]:
            phases.append([m["phase"], m["epoch"], m["epoch"]])
        phases[-1][2] = m["epoch"]
    if len(phases) > 1:
        for i, (name, first, last) in enumerate(phases):
            for col in (1, 2):
                fig.add_vrect(x0=first - 0.5, x1=last + 0.5, fillcolor=PHASE_COLOURS[i % 2], line_width=0,
                              annotation_text=name if col == 1 else "", annotation_position="top left",
                              row=1, col=col)
    fig.update_xaxes(title="epoch", dtick=1)
    fig.update_yaxes(range=[0, 1.02], row=1, col=2)
    return _layout(fig, "Training curves")


def confusion_matrix(cm: np.ndarray, classes: list[str]) -> go.Figure:
    totals = cm.sum(1, keepdims=True)
    frac = np.divide(cm, totals, out=np.zeros_like(cm, dtype=float), where=totals > 0)
    n = len(classes)
    text = [[f"{cm[i, j]}<br>{frac[i, j]:.0%}" for j in range(n)] for i in range(n)]
    fig = go.Figure(go.Heatmap(z=frac, x=classes, y=classes, text=text,
                               texttemplate="%{text}" if n <= 20 else None,  # many classes: numbers on hover
                               hovertemplate="true %{y}<br>predicted %{x}<br>%{text}<extra></extra>",
                               colorscale="Blues", zmin=0, zmax=1, colorbar=dict(title="row %")))
    fig.update_xaxes(title="predicted", side="bottom")
    fig.update_yaxes(title="true", autorange="reversed")
    cell = 60 if n <= 12 else max(12, 720 // n)  # at most ~840 px tall, however many classes
    return _layout(fig, "Confusion matrix (validation)", height=120 + cell * max(n, 4))


def per_class_accuracy(acc: np.ndarray, classes: list[str]) -> go.Figure:
    fig = go.Figure(go.Bar(x=classes, y=acc, marker_color=THAWED, text=[f"{a:.0%}" for a in acc],
                           textposition="outside"))
    fig.update_yaxes(range=[0, 1.1], title="accuracy")
    return _layout(fig, "Accuracy per class (validation)")


def class_balance(counts: dict[str, int], train: dict[str, int] | None = None,
                  val: dict[str, int] | None = None) -> go.Figure:
    fig = go.Figure()
    names = list(counts)
    if train is not None and val is not None:
        fig.add_bar(x=names, y=[train.get(c, 0) for c in names], name="train", marker_color=THAWED)
        fig.add_bar(x=names, y=[val.get(c, 0) for c in names], name="validation", marker_color=FROZEN)
        fig.update_layout(barmode="stack")
    else:
        fig.add_bar(x=names, y=list(counts.values()), marker_color=THAWED)
    fig.update_yaxes(title="images")
    return _layout(fig, "Images per class")


def topk(pairs: list[tuple[str, float]], title: str = "Top predictions") -> go.Figure:
    names = [n for n, _ in pairs][::-1]
    probs = [p for _, p in pairs][::-1]
    fig = go.Figure(go.Bar(x=probs, y=names, orientation="h", marker_color=HEAD,
                           text=[f"{p:.1%}" for p in probs], textposition="outside"))
    fig.update_xaxes(range=[0, 1.15], title="probability")
    return _layout(fig, title, height=120 + 40 * len(pairs))


def strategy_matrix(size: str | None, similarity: str | None, matrix: dict) -> go.Figure:
    """The 2x2 advisor grid with the chosen cell highlighted."""
    sizes, sims = ("small", "large"), ("similar", "different")
    fig = go.Figure()
    for i, s in enumerate(sizes):
        for j, sim in enumerate(sims):
            chosen = (s, sim) == (size, similarity)
            fig.add_shape(type="rect", x0=j, x1=j + 1, y0=1 - i, y1=2 - i, line=dict(color="#333", width=2),
                          fillcolor=HEAD if chosen else "#f2f2f2")
            fig.add_annotation(x=j + 0.5, y=1.5 - i, text=f"<b>{matrix[(s, sim)].title}</b>", showarrow=False,
                               font=dict(size=15, color="white" if chosen else "#222"))
    for j, sim in enumerate(sims):
        fig.add_annotation(x=j + 0.5, y=2.12, text=f"{sim} to ImageNet", showarrow=False, font=dict(size=14))
    for i, s in enumerate(sizes):
        fig.add_annotation(x=-0.05, y=1.5 - i, text=f"{s} dataset", showarrow=False, textangle=-90,
                           font=dict(size=14))
    fig.update_xaxes(visible=False, range=[-0.15, 2.02])
    fig.update_yaxes(visible=False, range=[-0.02, 2.25])
    return _layout(fig, "Which strategy? (dataset size x similarity)", height=330)


CAM_COLOURSCALES = {  # label -> plotly colorscale; Cividis is designed for colour-blind viewers
    "Jet": "Jet", "Turbo": "Turbo", "Viridis": "Viridis", "Cividis (colour-blind safe)": "Cividis",
    "Inferno": "Inferno",
}


def _downsample(m: np.ndarray, size: int = 112) -> np.ndarray:
    """A full-resolution map thinned for the browser; zsmooth then interpolates it smoothly."""
    step_h, step_w = max(1, m.shape[0] // size), max(1, m.shape[1] // size)
    return m[::step_h, ::step_w]


MAX_PANEL_COLS = 3  # CAM panels a row: ~240 px each in a full-width chart at 1280 px


def cam_panels(panels: list[tuple[str, np.ndarray, np.ndarray | None]], opacity: float = 0.5,
               colourscale: str = "Jet", cols: int | None = None, title: str = "",
               max_cols: int = MAX_PANEL_COLS) -> go.Figure:
    """Heatmaps over the image crops the model saw: one panel per (title, crop (H, W, 3) uint8, map (H, W)).
    At most `max_cols` a row (more wrap to the next; a strip read left to right may ask for more than the
    usual 3), each panel square and as wide as the row allows at CHART_PX, the colour bar below them."""
    n = len(panels)
    cols = max(1, min(cols or max_cols, max_cols, n))
    rows = math.ceil(n / cols)
    gap = 16
    panel_px = (CHART_PX - 20 - gap * (cols - 1)) / cols
    title_lines = max(p[0].count("<br>") + 1 for p in panels)
    title_px = 6 + round(PANEL_TITLE_PX * 1.3) * title_lines
    plot_h = rows * panel_px + (rows - 1) * title_px
    fig = make_subplots(rows=rows, cols=cols, subplot_titles=[_clip(p[0], panel_px, PANEL_TITLE_PX) for p in panels],
                        horizontal_spacing=gap / (CHART_PX - 20), vertical_spacing=title_px / plot_h if rows > 1 else 0)
    for i, (_, crop, cam_map) in enumerate(panels):
        r, c = divmod(i, cols)
        fig.add_trace(go.Image(source=png_data_uri(crop), hoverinfo="skip"), row=r + 1, col=c + 1)
        if cam_map is not None:
            h, w = crop.shape[:2]
            small = _downsample(cam_map)
            fig.add_trace(go.Heatmap(
                z=small, x=np.linspace(0, w - 1, small.shape[1]), y=np.linspace(0, h - 1, small.shape[0]),
                zmin=0, zmax=1, zsmooth="best", opacity=opacity, colorscale=colourscale,
                showscale=i == 0, colorbar=dict(title=dict(text="importance", side="right"), orientation="h",
                                                x=0.5, xanchor="center", y=-12 / plot_h, yanchor="top",
                                                len=0.6, thickness=14),
                hovertemplate="importance %{z:.2f}<extra></extra>"), row=r + 1, col=c + 1)
    fig.update_xaxes(visible=False, constrain="domain")
    fig.update_yaxes(visible=False, autorange="reversed", scaleanchor="x", constrain="domain", constraintoward="top")
    for k in range(2, n + 1):
        fig.update_yaxes(scaleanchor=f"x{k}", row=(k - 1) // cols + 1, col=(k - 1) % cols + 1)
    fig.update_annotations(font_size=PANEL_TITLE_PX)
    top = (40 if title else 8) + title_px
    _layout(fig, title, height=round(plot_h + top + 70))
    return fig.update_layout(margin=dict(l=10, r=10, t=top, b=70))


def heatmap(z: np.ndarray, x_title: str, y_labels: list[str], title: str, colourscale: str = "Viridis",
            zmin: float | None = 0.0, zmax: float | None = 1.0) -> go.Figure:
    fig = go.Figure(go.Heatmap(z=z, y=y_labels, colorscale=colourscale, zmin=zmin, zmax=zmax,
                               hovertemplate="%{y} · channel %{x}: %{z:.3f}<extra></extra>"))
    fig.update_xaxes(title=x_title)
    fig.update_yaxes(autorange="reversed")
    return _layout(fig, title, height=140 + 22 * len(y_labels))


def bars(values: np.ndarray, title: str, highlight_high: list[int] = (), highlight_low: list[int] = (),
         x_title: str = "channel", y_title: str = "gate") -> go.Figure:
    colours = [HEAD if i in highlight_high else THAWED if i in highlight_low else FROZEN
               for i in range(len(values))]
    fig = go.Figure(go.Bar(x=list(range(len(values))), y=values, marker_color=colours,
                           hovertemplate=f"{x_title} %{{x}}: %{{y:.3f}}<extra></extra>"))
    fig.update_xaxes(title=x_title)
    fig.update_yaxes(title=y_title)
    return _layout(fig, title)


def map_grid(maps: np.ndarray, titles: list[str], cols: int = 8, title: str = "",
             colourscale: str = "Viridis", smooth: bool = True) -> go.Figure:
    """Small multiples of 2-D maps (feature maps, attention maps), each scaled to its own range. Every map keeps
    its own aspect (square cells: a 7×7 map is drawn square, never stretched to the row's height), sized for a
    full-width chart at CHART_PX."""
    n = len(maps)
    cols = min(cols, n)
    rows = math.ceil(n / cols)
    h, w = np.asarray(maps[0]).shape[-2:]
    gap = 8
    cell_w = (CHART_PX - 20 - gap * (cols - 1)) / cols
    cell_h = cell_w * h / w
    title_px = 6 + round(PANEL_TITLE_PX * 1.3)
    plot_h = rows * cell_h + (rows - 1) * title_px
    fig = make_subplots(rows=rows, cols=cols, subplot_titles=[_clip(t, cell_w + gap, PANEL_TITLE_PX) for t in titles],
                        horizontal_spacing=gap / (CHART_PX - 20), vertical_spacing=title_px / plot_h if rows > 1 else 0)
    for i, m in enumerate(maps):
        r, c = divmod(i, cols)
        fig.add_trace(go.Heatmap(z=m, colorscale=colourscale, showscale=False, zsmooth="best" if smooth else False,
                                 hovertemplate="%{z:.3f}<extra></extra>"), row=r + 1, col=c + 1)
    fig.update_xaxes(visible=False, constrain="domain")
    fig.update_yaxes(visible=False, autorange="reversed", constrain="domain", constraintoward="top")
    for k in range(1, n + 1):  # one map cell = one square: y scaled to x, axis by axis
        fig.update_yaxes(scaleanchor="x" if k == 1 else f"x{k}", scaleratio=1, row=(k - 1) // cols + 1,
                         col=(k - 1) % cols + 1)
    fig.update_annotations(font_size=PANEL_TITLE_PX)
    top = (40 if title else 8) + title_px
    _layout(fig, title, height=round(plot_h + top + 10))
    return fig.update_layout(margin=dict(l=10, r=10, t=top, b=10))


def lr_sweep(lrs: list[float], losses: list[float], suggestion: float) -> go.Figure:
    """The LR finder's smoothed loss against a log learning-rate axis, the suggestion marked."""
    fig = go.Figure(go.Scatter(x=lrs, y=losses, mode="lines", line=dict(width=3, color=THAWED), name="loss"))
    fig.add_vline(x=suggestion, line_dash="dash", line_color=HEAD,
                  annotation_text=f"suggested {suggestion:.1e}", annotation_position="top right")
    fig.update_xaxes(LOG_AXIS, title="learning rate")
    fig.update_yaxes(title="smoothed training loss")
    return _layout(fig, "Learning-rate finder")


RUN_COLOURS = ["#0072B2", "#E69F00", "#009E73", "#CC79A7", "#D55E00", "#56B4E9", "#F0E442", "#000000"]


def compare_curves(runs: list[tuple[str, list[dict]]]) -> go.Figure:
    """Validation loss and accuracy per epoch, one line per run (Okabe-Ito colours)."""
    fig = make_subplots(rows=1, cols=2, subplot_titles=("validation loss", "validation accuracy"))
    for i, (name, metrics) in enumerate(runs):
        colour = RUN_COLOURS[i % len(RUN_COLOURS)]
        epochs = [m["epoch"] for m in metrics]
        for col, key in ((1, "val_loss"), (2, "val_acc")):
            fig.add_scatter(x=epochs, y=[m[key] for m in metrics], mode="lines+markers", name=name,
                            legendgroup=name, showlegend=col == 1, line=dict(color=colour, width=3),
                            row=1, col=col)
    fig.update_xaxes(title="epoch", dtick=1)
    fig.update_yaxes(range=[0, 1.02], row=1, col=2)
    return _layout(fig, "Strategies compared")


# ---- projector mode: the same figures for the back of a room ---------------------------------------------
PROJECTOR_SCALE = 1.5  # type, lines and markers, against the sizes above
PROJECTOR_COLOURSCALE = "Cividis"  # perceptually uniform, colour-blind safe, and its ends stay apart when a
# projector washes the dark end out (Jet and Blues lose their middle, and red/green is lost to many viewers)
_RGBA = re.compile(r"rgba\(([^,]+),([^,]+),([^,]+),\s*([0-9.]+)\)")


_AXIS = re.compile(r"[xy]axis\d*")


def projector(fig: go.Figure, scale: float = PROJECTOR_SCALE) -> go.Figure:
    """A copy of `fig` for a projector (the original, maybe cached, is left as it is): every font `scale`
    times its size (titles, axes, legends, colour bars, annotations, text on bars and cells), lines, markers
    and outlines `scale` times thicker, every colour map Cividis, pale shading twice as strong, and the
    margins grown with the type (the figure taller by as much, so its plot keeps its size). Works on the
    figure's dict and validates once: property by property took 0.5 s for a grid of 64 maps."""
    d = fig.to_dict()
    lay = d.setdefault("layout", {})

    def grow(node: dict, key: str, default: float) -> None:  # node[key] (a size) `scale` times larger
        node[key] = round((default if node.get(key) is None else node[key]) * scale, 1)

    def font(node: dict, default: float) -> None:
        grow(node.setdefault("font", {}), "size", default)

    font(lay, FONT["size"])
    for key, default in (("title", TITLE_PX), ("legend", TICK_PX), ("hoverlabel", TICK_PX)):
        font(lay.setdefault(key, {}), default)
    for key in [k for k in lay if _AXIS.fullmatch(k)] or ["xaxis", "yaxis"]:
        ax = lay.setdefault(key, {})
        grow(ax.setdefault("tickfont", {}), "size", TICK_PX)
        font(ax.setdefault("title", {}), AXIS_TITLE_PX)
    for note in lay.get("annotations", []):
        font(note, FONT["size"])
    for shape in lay.get("shapes", []):
        grow(shape.setdefault("line", {}), "width", 2)
        m = _RGBA.fullmatch(str(shape.get("fillcolor", "")).replace(" ", ""))
        if m and float(m[4]) < 0.5:
            shape["fillcolor"] = f"rgba({m[1]},{m[2]},{m[3]},{min(1.0, 2 * float(m[4])):g})"
    for trace in d.get("data", []):
        _projector_trace(trace, grow)
    margin = lay.get("margin", {})
    if margin:
        old = sum(margin.get(k, 0) for k in "tb")
        lay["margin"] = {k: round(v * scale) if k in "lrtb" else v for k, v in margin.items()}
        if lay.get("height"):
            lay["height"] = lay["height"] + sum(lay["margin"].get(k, 0) for k in "tb") - old
    return go.Figure(d)


def _projector_trace(trace: dict, grow) -> None:
    """One trace of `projector`: its text, colour bar and colour map, line and markers."""
    kind = trace.get("type", "scatter")
    if kind in ("scatter", "bar", "heatmap"):
        grow(trace.setdefault("textfont", {}), "size", TICK_PX)
    if kind in ("heatmap", "contour", "histogram2d"):
        trace["colorscale"] = PROJECTOR_COLOURSCALE
        bar = trace.setdefault("colorbar", {})
        grow(bar.setdefault("tickfont", {}), "size", TICK_PX)
        grow(bar.setdefault("title", {}).setdefault("font", {}), "size", TICK_PX)
    if kind == "scatter":
        grow(trace.setdefault("line", {}), "width", 2)
        marker = trace.setdefault("marker", {})
        if not isinstance(marker.get("size"), (list, tuple, np.ndarray)):
            grow(marker, "size", 6)
