"""Plot builders: numbers in, plotly figures (or PIL image grids) out. No Streamlit here."""

from __future__ import annotations

import math

import numpy as np
import plotly.graph_objects as go
from plotly.subplots import make_subplots
from PIL import Image, ImageDraw, ImageFont

# Okabe-Ito colours: readable by colour-blind viewers and on a projector
FROZEN, THAWED, HEAD, PARTLY = "#56B4E9", "#E69F00", "#009E73", "#CC79A7"
STATE_COLOURS = {"frozen": FROZEN, "trainable": THAWED, "new head": HEAD, "partly": PARTLY}
PHASE_COLOURS = ["rgba(86,180,233,0.12)", "rgba(230,159,0,0.12)"]
FONT = dict(size=15)


def _layout(fig: go.Figure, title: str, height: int = 380) -> go.Figure:
    fig.update_layout(title=title, height=height, font=FONT, margin=dict(l=50, r=20, t=60, b=50),
                      template="plotly_white", legend=dict(orientation="h", y=-0.2))
    return fig


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


def stage_diagram(rows: list[dict], title: str = "") -> go.Figure:
    """The network as a row of stage boxes: colour = frozen / trainable / new head, text = BN mode."""
    n = len(rows)
    per_line = min(n, 10)
    lines = math.ceil(n / per_line)
    shapes, notes = [], []  # collected as plain dicts and set once: plotly re-validates every annotation on
    for i, row in enumerate(rows):  # each add_annotation, which made this figure quadratic (1 s for 20 stages)
        col, line = i % per_line, i // per_line
        x0, y0 = col * 1.1, -line * 1.6
        state = stage_state(row)
        shapes.append(dict(type="rect", x0=x0, x1=x0 + 1, y0=y0, y1=y0 + 1, fillcolor=STATE_COLOURS[state],
                           line=dict(color="#333", width=3 if row.get("bn_modes") and "train" in row["bn_modes"]
                                     and state == "frozen" else 1)))
        bn = "BN " + "/".join(row["bn_modes"]) if row.get("bn_modes") else "no BN"
        notes.append(dict(x=x0 + 0.5, y=y0 + 0.62, text=f"<b>{row['stage']}</b>", showarrow=False,
                          font=dict(size=12, color="#111")))
        notes.append(dict(x=x0 + 0.5, y=y0 + 0.38, text=_short(row["params"]), showarrow=False,
                          font=dict(size=11, color="#111")))
        notes.append(dict(x=x0 + 0.5, y=y0 - 0.18, text=bn, showarrow=False, font=dict(size=11, color="#444")))
        if col < per_line - 1 and i < n - 1:
            notes.append(dict(x=x0 + 1.1, y=y0 + 0.5, ax=x0 + 1.0, ay=y0 + 0.5, xref="x", yref="y", axref="x",
                              ayref="y", showarrow=True, arrowhead=2, text=""))
    fig = go.Figure(layout=dict(shapes=shapes, annotations=notes))
    for state, colour in STATE_COLOURS.items():  # legend entries
        fig.add_scatter(x=[None], y=[None], mode="markers", marker=dict(size=14, color=colour, symbol="square"),
                        name=state)
    fig.update_xaxes(visible=False, range=[-0.2, per_line * 1.1])
    fig.update_yaxes(visible=False, range=[-(lines - 1) * 1.6 - 0.5, 1.2], scaleanchor=None)
    return _layout(fig, title or "Stages: what trains, what stays frozen", height=150 + 150 * lines)


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


def _font(size: int):
    try:
        return ImageFont.truetype("DejaVuSans.ttf", size)
    except OSError:
        return ImageFont.load_default(size=size)


def _fit_lines(draw, text: str, font, width: int, max_lines: int) -> list[str]:
    """`text` (its own line breaks kept) wrapped to `width` pixels, at most `max_lines` lines, the last one
    ending in an ellipsis when something was cut: captions never run into the next cell."""
    out: list[str] = []
    for para in text.split("\n"):
        line = ""
        for ch in para:
            if draw.textlength(line + ch, font=font) > width and line:
                out.append(line)
                line = ch
            else:
                line += ch
        out.append(line)
    if len(out) > max_lines:
        out = out[:max_lines]
        last = out[-1]
        while last and draw.textlength(last + "…", font=font) > width:
            last = last[:-1]
        out[-1] = last + "…"
    return out


def image_grid(images: list[Image.Image], captions: list[str], cols: int = 4, cell: int = 180,
               colours: list[str] | None = None, max_lines: int = 3) -> Image.Image:
    """A captioned grid of images as one PIL image (for PNG download and slides). Each caption is wrapped to
    its cell's width (at most `max_lines` lines)."""
    rows = max(1, math.ceil(len(images) / cols))
    font = _font(13)
    measure = ImageDraw.Draw(Image.new("RGB", (1, 1)))
    wrapped = [_fit_lines(measure, cap, font, cell, max_lines) for cap in captions]
    line_h = 16
    text_h = 8 + line_h * max((len(w) for w in wrapped), default=1)
    pad = 8
    grid = Image.new("RGB", (cols * (cell + pad) + pad, rows * (cell + text_h + pad) + pad), "white")
    draw = ImageDraw.Draw(grid)
    for k, (img, lines) in enumerate(zip(images, wrapped)):
        r, c = divmod(k, cols)
        x, y = pad + c * (cell + pad), pad + r * (cell + text_h + pad)
        thumb = img.copy()
        thumb.thumbnail((cell, cell))
        grid.paste(thumb, (x + (cell - thumb.width) // 2, y + (cell - thumb.height) // 2))
        colour = colours[k] if colours else "#111111"
        for i, line in enumerate(lines):
            draw.text((x, y + cell + 4 + i * line_h), line, fill=colour, font=font)
    return grid


def to_pil(x) -> Image.Image:
    """(C, H, W) float tensor in [0, 1] -> PIL RGB image."""
    arr = (x.detach().cpu().clamp(0, 1).permute(1, 2, 0).numpy() * 255).round().astype(np.uint8)  # (H, W, C)
    return Image.fromarray(arr)


CAM_COLOURSCALES = {  # label -> plotly colorscale; Cividis is designed for colour-blind viewers
    "Jet": "Jet", "Turbo": "Turbo", "Viridis": "Viridis", "Cividis (colour-blind safe)": "Cividis",
    "Inferno": "Inferno",
}


def _downsample(m: np.ndarray, size: int = 112) -> np.ndarray:
    """A full-resolution map thinned for the browser; zsmooth then interpolates it smoothly."""
    step_h, step_w = max(1, m.shape[0] // size), max(1, m.shape[1] // size)
    return m[::step_h, ::step_w]


def cam_panels(panels: list[tuple[str, np.ndarray, np.ndarray | None]], opacity: float = 0.5,
               colourscale: str = "Jet", cols: int | None = None, title: str = "") -> go.Figure:
    """Heatmaps over the image crops the model saw: one panel per (title, crop (H, W, 3) uint8, map (H, W))."""
    n = len(panels)
    cols = cols or min(n, 4)
    rows = math.ceil(n / cols)
    fig = make_subplots(rows=rows, cols=cols, subplot_titles=[p[0] for p in panels],
                        horizontal_spacing=0.02, vertical_spacing=0.08)
    for i, (_, crop, cam_map) in enumerate(panels):
        r, c = divmod(i, cols)
        fig.add_trace(go.Image(z=crop, hoverinfo="skip"), row=r + 1, col=c + 1)
        if cam_map is not None:
            h, w = crop.shape[:2]
            small = _downsample(cam_map)
            fig.add_trace(go.Heatmap(
                z=small, x=np.linspace(0, w - 1, small.shape[1]), y=np.linspace(0, h - 1, small.shape[0]),
                zmin=0, zmax=1, zsmooth="best", opacity=opacity, colorscale=colourscale,
                showscale=i == 0, colorbar=dict(title="importance", len=0.8),
                hovertemplate="importance %{z:.2f}<extra></extra>"), row=r + 1, col=c + 1)
    fig.update_xaxes(visible=False)
    fig.update_yaxes(visible=False, autorange="reversed", scaleanchor="x")
    for k in range(2, n + 1):
        fig.update_yaxes(scaleanchor=f"x{k}", row=(k - 1) // cols + 1, col=(k - 1) % cols + 1)
    fig.update_annotations(font_size=13)
    return _layout(fig, title, height=60 + 280 * rows)


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
    """Small multiples of 2-D maps (feature maps, attention maps), each scaled to its own range."""
    n = len(maps)
    cols = min(cols, n)
    rows = math.ceil(n / cols)
    fig = make_subplots(rows=rows, cols=cols, subplot_titles=titles, horizontal_spacing=0.01,
                        vertical_spacing=0.06)
    for i, m in enumerate(maps):
        r, c = divmod(i, cols)
        fig.add_trace(go.Heatmap(z=m, colorscale=colourscale, showscale=False, zsmooth="best" if smooth else False,
                                 hovertemplate="%{z:.3f}<extra></extra>"), row=r + 1, col=c + 1)
    fig.update_xaxes(visible=False)
    fig.update_yaxes(visible=False, autorange="reversed")
    fig.update_annotations(font_size=11)
    return _layout(fig, title, height=60 + (1100 // cols + 30) * rows)


def lr_sweep(lrs: list[float], losses: list[float], suggestion: float) -> go.Figure:
    """The LR finder's smoothed loss against a log learning-rate axis, the suggestion marked."""
    fig = go.Figure(go.Scatter(x=lrs, y=losses, mode="lines", line=dict(width=3, color=THAWED), name="loss"))
    fig.add_vline(x=suggestion, line_dash="dash", line_color=HEAD,
                  annotation_text=f"suggested {suggestion:.1e}", annotation_position="top right")
    fig.update_xaxes(type="log", title="learning rate")
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
