"""Figure builders: what a chart or a grid shows can be read whole."""

import numpy as np
import plotly.graph_objects as go
from PIL import Image, ImageDraw

from vislab.figures import charts as plots, images as pictures


def test_grid_captions_wrap_inside_their_cell_and_never_run_into_the_next():
    long = "true: a_rather_long_class_name\npred: ankle_boot_but_even_longer_than_that (p=0.93)\nloss 2.31"
    cell = 120
    font = pictures._font(13)
    draw = ImageDraw.Draw(Image.new("RGB", (1, 1)))
    lines = pictures._fit_lines(draw, long, font, cell, max_lines=3)
    assert len(lines) == 3 and any(line.endswith("…") for line in lines)  # cut, and it says so
    assert lines[-1] == "loss 2.31"  # ... but never the last line
    assert all(draw.textlength(line, font=font) <= cell for line in lines)
    assert pictures._fit_lines(draw, "short\npred: x", font, cell, 3) == ["short", "pred: x"]
    img = Image.new("RGB", (64, 64), "gray")
    grid = pictures.image_grid([img, img], [long, long], cols=2, cell=cell)
    pad = 8
    gap = grid.crop((pad + cell, 0, pad + cell + pad, grid.height))  # the white gap between the two cells
    assert gap.getextrema() == ((255, 255), (255, 255), (255, 255))  # no caption pixel crosses into it
    taller = pictures.image_grid([img], [long], cols=1, cell=cell)
    shorter = pictures.image_grid([img], ["one line"], cols=1, cell=cell)
    assert taller.height > shorter.height  # room for three lines, not two cut to 32 characters


def test_stage_names_on_the_parameter_chart_are_not_clipped():
    rows = [{"stage": f"features.{i}", "params": 1000 * (i + 1), "trainable": 0} for i in range(4)]
    rows.append({"stage": "head", "params": 1280 * 3, "trainable": 1280 * 3})
    fig = plots.params_by_stage(rows)
    assert fig.layout.xaxis.automargin is True
    assert [str(x) for bar in fig.data for x in bar.x] == [r["stage"] for r in rows[:4]] + ["head"]


def test_the_stage_diagram_draws_one_box_per_stage_coloured_by_state_with_its_name_size_and_bn_mode():
    rows = [{"stage": f"features.{i}", "params": 1000 * (i + 1), "trainable": 0, "bn_modes": ["eval"]}
            for i in range(12)] + [{"stage": "head", "params": 3843, "trainable": 3843, "bn_modes": []}]
    rows[10]["trainable"] = rows[10]["params"]  # one thawed stage
    fig = plots.stage_diagram(rows, "t")
    boxes = [s for s in fig.layout.shapes if s.type == "rect"]
    assert [b.fillcolor for b in boxes] == [plots.STATE_COLOURS[plots.stage_state(r)] for r in rows]
    texts = [a.text for a in fig.layout.annotations]
    for r in rows:
        assert f"<b>{r['stage']}</b>" in texts and plots._short(r["params"]) in texts
    assert texts.count("BN eval") == 12 and texts.count("no BN") == 1
    arrows = [a for a in fig.layout.annotations if a.showarrow]
    lines = len({b.y0 for b in boxes})
    assert lines > 1 and len(arrows) == len(rows) - lines  # between neighbours on a line, none across a break


# --- readable on a projector (issue 22): the lab is shown on a wall at 1280 x 720 ---------------------------

PAGE_PX = 820  # the width of a full-width chart or image at 1280 px with the sidebar open


def _axes(fig):
    lay = fig.layout
    return [lay[k] for k in lay if k.startswith(("xaxis", "yaxis")) and lay[k] is not None]


def _all_figures():
    rows = [{"stage": f"features.{i}", "params": 1000 * 3 ** i, "trainable": 0, "bn_modes": ["eval"]}
            for i in range(6)] + [{"stage": "head", "params": 3843, "trainable": 3843, "bn_modes": []}]
    metrics = [{"epoch": e, "phase": "head", "train_loss": 1 / e, "val_loss": 1.1 / e, "train_acc": 0.5,
                "val_acc": 0.6} for e in range(1, 4)]
    crop, cam_map = np.zeros((224, 224, 3), np.uint8), np.random.default_rng(0).random((224, 224))
    return {
        "params_by_stage": plots.params_by_stage(rows),
        "curves": plots.curves(metrics),
        "confusion": plots.confusion_matrix(np.array([[3, 1], [2, 4]]), ["a", "b"]),
        "per_class": plots.per_class_accuracy(np.array([0.5, 0.7]), ["a", "b"]),
        "balance": plots.class_balance({"a": 3, "b": 4}),
        "topk": plots.topk([("cat", 0.7), ("dog", 0.2)]),
        "heatmap": plots.heatmap(np.random.default_rng(0).random((3, 40)), "channel", ["b1", "b2", "b3"], "g"),
        "bars": plots.bars(np.linspace(0, 1, 10), "gates"),
        "map_grid": plots.map_grid(np.random.default_rng(0).random((4, 7, 7)), ["a", "b", "c", "d"], cols=4),
        "cam_panels": plots.cam_panels([("GradCAM · layer4<br>cat · 0.1 s", crop, cam_map)] * 4),
        "lr_sweep": plots.lr_sweep([1e-7, 1e-4, 1e-1, 10.0], [1.0, 0.9, 0.3, 2.0], 1e-2),
        "compare": plots.compare_curves([("run", metrics)]),
    }


def test_every_chart_has_ticks_of_at_least_14_px_and_titles_of_at_least_16_px():
    """Streamlit's chart theme sets 12 px ticks in the template: each axis must set its own size to beat it."""
    for name, fig in _all_figures().items():
        assert (fig.layout.title.font.size or 0) >= 16, name  # unset: the theme's own size
        axes = _axes(fig)
        assert axes, name
        for ax in axes:
            assert ax.tickfont.size is not None and ax.tickfont.size >= 14, (name, ax.plotly_name)
            assert ax.title.font.size is not None and ax.title.font.size >= 16, (name, ax.plotly_name)
        assert fig.layout.legend.font.size >= 14, name
        for trace in fig.data:
            if trace.type == "heatmap" and trace.showscale is not False:
                assert trace.colorbar.tickfont.size >= 14, name
        if name in ("map_grid", "cam_panels"):  # the subplot titles
            assert all(a.font.size >= 14 for a in fig.layout.annotations), name


def test_log_axes_are_labelled_in_powers_of_ten_one_label_a_decade():
    figs = _all_figures()
    logs = [figs["lr_sweep"].layout.xaxis, figs["params_by_stage"].layout.yaxis]
    for ax in logs:
        assert ax.type == "log"
        assert ax.exponentformat in ("power", "e")  # 10⁻⁴ (or 1e-4), not "100μ" (SI) nor "0.0001"
        assert ax.dtick == 1  # one label a decade: no "2, 5" between them
        assert ax.minorloglabels == "none"


def _cells_px(fig):
    """Each subplot's (width, height) in px, for a chart CHART_PX wide and the figure's own height."""
    lay = fig.layout
    plot_w = plots.CHART_PX - lay.margin.l - lay.margin.r
    plot_h = lay.height - lay.margin.t - lay.margin.b
    out = []
    for k in lay:
        if k.startswith("xaxis") and lay[k] is not None:
            y = lay["yaxis" + k[5:]]
            out.append(((lay[k].domain[1] - lay[k].domain[0]) * plot_w, (y.domain[1] - y.domain[0]) * plot_h))
    return out


def test_map_grid_keeps_square_cells_and_each_maps_own_aspect():
    rng = np.random.default_rng(0)
    for shape, cols, n in (((7, 7), 8, 16), ((14, 14), 6, 12), ((7, 14), 4, 4)):
        fig = plots.map_grid(rng.random((n,) + shape), [f"ch {i}" for i in range(n)], cols=cols, title="t")
        aspect = shape[0] / shape[1]
        for w, h in _cells_px(fig):  # the room each map gets at CHART_PX has the map's own aspect ...
            assert abs(h / w - aspect) < 0.08 * aspect, (shape, w, h)
        for k in range(1, n + 1):  # ... and plotly keeps it at any other width: y is scaled to x, 1:1
            y, x = fig.layout["yaxis" + ("" if k == 1 else str(k))], "x" + ("" if k == 1 else str(k))
            assert y.scaleanchor == x and (y.scaleratio or 1) == 1 and y.constrain == "domain"


def test_cam_panels_are_at_most_three_a_row_and_large_enough_to_read():
    crop, cam_map = np.zeros((224, 224, 3), np.uint8), np.random.default_rng(0).random((224, 224))
    for n in (1, 4, 8):
        fig = plots.cam_panels([(f"GradCAM · layer4<br>cat · 0.1 s · ROAD +0.123 #{i}", crop, cam_map)
                                for i in range(n)], cols=4)
        cells = _cells_px(fig)
        assert len({round(fig.layout["xaxis" + ("" if k == 1 else str(k))].domain[0], 3)
                    for k in range(1, n + 1)}) <= 3  # at most three columns, even when asked for four
        for w, h in cells:
            assert min(w, h) >= 220, (n, w, h)  # ~120 px before
        colorbars = [t.colorbar for t in fig.data if t.type == "heatmap" and t.showscale]
        assert colorbars and colorbars[0].orientation == "h"  # below the panels, not eating their width


def test_stage_diagram_names_fit_their_boxes_and_break_only_after_a_dot_or_underscore():
    mobilenet = [{"stage": f"features.{i}", "params": 5000, "trainable": 0, "bn_modes": ["frozen"]}
                 for i in range(19)] + [{"stage": "head", "params": 3843, "trainable": 3843, "bn_modes": []}]
    vit = [{"stage": f"encoder.layers.encoder_layer_{i}", "params": 7087872, "trainable": 0, "bn_modes": []}
           for i in range(12)] + [{"stage": "head", "params": 3843, "trainable": 3843, "bn_modes": []}]
    for rows in (mobilenet, vit):
        fig = plots.stage_diagram(rows, "t")
        lay = fig.layout
        unit_px = (plots.CHART_PX - lay.margin.l - lay.margin.r) / (lay.xaxis.range[1] - lay.xaxis.range[0])
        names = [a for a in lay.annotations if a.text.startswith("<b>")]
        assert len(names) == len(rows)
        for a, r in zip(names, rows):
            label = a.text[3:-4]
            assert label.replace("<br>", "") == r["stage"]  # whole, broken at most once, after a separator
            assert all(part[-1] in "._-" for part in label.split("<br>")[:-1])
            widest = max(plots._text_px(part, a.font.size, bold=True) for part in label.split("<br>"))
            assert widest <= unit_px * 1.0, (r["stage"], widest, unit_px)  # the box is one unit wide
            assert a.font.size >= 13


def test_top_loss_captions_keep_the_loss_readable_whatever_the_class_names():
    """The Train page draws its 12 top losses as a 6 x 170 px grid, shown ~820 px wide."""
    caps = ["true: Cardigan Welsh Corgi\npred: Pembroke Welsh Corgi (p=0.51)\nloss 0.67",
            "true: a_rather_long_class_name\npred: ankle_boot_but_even_longer_than_that (p=0.93)\nloss 2.31",
            "true: local\npred: nominal (p=0.38)\nloss 1.17"]
    cell, cols = 170, 6
    grid_px = cols * (cell + 8) + 8
    assert pictures.caption_px(cell) * PAGE_PX / grid_px >= 14  # ~10 px before
    font = pictures._font(pictures.caption_px(cell))
    draw = ImageDraw.Draw(Image.new("RGB", (1, 1)))
    for cap, lines in zip(caps, pictures.caption_lines(caps, cell)):
        assert lines[-1] == cap.split("\n")[-1]  # the loss, whole, on the last line
        assert lines[0].startswith("true: ") and any(line.startswith("pred: ") for line in lines)
        assert all(draw.textlength(line, font=font) <= cell for line in lines)
    assert pictures.caption_lines(["true: local\npred: local (p=0.34)\nloss 1.15"], cell)[0][-2:] == [
        "(p=0.34)", "loss 1.15"]  # a line never breaks inside a number
    wraps = pictures._fit_lines(draw, "true: a_rather_long_class_name\npred: b\nloss 2.31 (worst of 12)",
                             pictures._font(13), 120, 4)  # the last line itself wraps: the others give way first
    assert len(wraps) == 4 and " ".join(wraps[-2:]) == "loss 2.31 (worst of 12)", wraps


def test_cam_panels_send_their_crops_as_png_not_as_json_numbers():
    """Each crop goes to the browser as a PNG data URI: a panel of a 224 px photo is tens of kB, not the
    ~600 kB of a JSON array of pixel values (2.6 MB for the Compare page's Grad-CAM chart, issue 22)."""
    import base64
    import io

    from PIL import Image

    rng = np.random.default_rng(0)
    crop = (rng.random((224, 224, 3)) * 255).astype(np.uint8)
    crop[:112] = 30  # half flat, like a photo's background
    fig = plots.cam_panels([("a", crop, rng.random((7, 7))), ("b", crop, None)])
    images = [t for t in fig.data if t.type == "image"]
    assert len(images) == 2 and all(t.z is None for t in images)
    back = np.asarray(Image.open(io.BytesIO(base64.b64decode(images[0].source.split(",", 1)[1]))))
    assert np.array_equal(back, crop)  # lossless: the pixels the model saw
    assert len(fig.to_json()) < 400_000


def test_projector_mode_makes_type_larger_lines_thicker_and_colour_maps_cividis():
    metrics = [{"epoch": e, "phase": "head" if e < 2 else "all", "train_loss": 1 / (e + 1), "val_loss": 1 / (e + 2),
                "train_acc": 0.5, "val_acc": 0.6} for e in range(4)]
    curves = plots.curves(metrics)
    big = plots.projector(curves)
    s = plots.PROJECTOR_SCALE
    assert s >= 1.4
    assert big.layout.font.size == plots.FONT["size"] * s and big.layout.title.font.size == plots.TITLE_PX * s
    for ax in ("xaxis", "xaxis2", "yaxis", "yaxis2"):  # every subplot's axes, not only the first
        assert big.layout[ax].tickfont.size == plots.TICK_PX * s
        assert big.layout[ax].title.font.size == plots.AXIS_TITLE_PX * s
    assert big.layout.legend.font.size == plots.TICK_PX * s
    assert [a.font.size for a in big.layout.annotations] == [16 * s] * 2 + [plots.FONT["size"] * s] * 4  # subplot
    # titles (plotly's 16 px) and the phase bands' names (the layout's font before)
    assert [t.line.width for t in big.data] == [t.line.width * s for t in curves.data] == [4.5] * 4
    assert all(t.marker.size == 6 * s for t in big.data)  # plotly's default markers, made larger too
    assert [sh.line.width for sh in big.layout.shapes] == [0] * 4  # phase bands stay without an outline...
    assert all(sh.fillcolor.endswith(",0.24)") for sh in big.layout.shapes)  # ... and twice as strong
    assert big.layout.height - curves.layout.height == (curves.layout.margin.t + curves.layout.margin.b) * (s - 1)
    assert curves.layout.font.size == plots.FONT["size"] and curves.data[0].line.width == 3  # the original: as it was

    cividis = go.Heatmap(colorscale="Cividis").colorscale
    cm = plots.projector(plots.confusion_matrix(np.array([[5, 1], [0, 6]]), ["a", "b"]))
    assert cm.data[0].colorscale == cividis and cm.data[0].textfont.size == plots.TICK_PX * s  # Blues: gone
    assert cm.data[0].colorbar.tickfont.size == plots.TICK_PX * s
    crop, cam = np.zeros((16, 16, 3), np.uint8), np.random.default_rng(0).random((16, 16))
    panels = plots.projector(plots.cam_panels([("a", crop, cam), ("b", crop, cam)], colourscale="Jet"))
    heat = [t for t in panels.data if t.type == "heatmap"]
    assert len(heat) == 2 and all(t.colorscale == cividis for t in heat)  # CAM overlays too
    assert all(a.font.size == plots.PANEL_TITLE_PX * s for a in panels.layout.annotations)
    maps = plots.projector(plots.map_grid(np.random.default_rng(0).random((4, 5, 5)), list("abcd")))
    assert all(t.colorscale == cividis for t in maps.data)
