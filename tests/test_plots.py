"""Figure builders: what a chart or a grid shows can be read whole."""

from PIL import Image, ImageDraw

from vislab import plots


def test_grid_captions_wrap_inside_their_cell_and_never_run_into_the_next():
    long = "true: a_rather_long_class_name\npred: ankle_boot_but_even_longer_than_that (p=0.93)\nloss 2.31"
    cell = 120
    font = plots._font(13)
    draw = ImageDraw.Draw(Image.new("RGB", (1, 1)))
    lines = plots._fit_lines(draw, long, font, cell, max_lines=3)
    assert len(lines) == 3 and lines[-1].endswith("…")  # cut, and it says so
    assert all(draw.textlength(line, font=font) <= cell for line in lines)
    assert plots._fit_lines(draw, "short\npred: x", font, cell, 3) == ["short", "pred: x"]
    img = Image.new("RGB", (64, 64), "gray")
    grid = plots.image_grid([img, img], [long, long], cols=2, cell=cell)
    pad = 8
    gap = grid.crop((pad + cell, 0, pad + cell + pad, grid.height))  # the white gap between the two cells
    assert gap.getextrema() == ((255, 255), (255, 255), (255, 255))  # no caption pixel crosses into it
    taller = plots.image_grid([img], [long], cols=1, cell=cell)
    shorter = plots.image_grid([img], ["one line"], cols=1, cell=cell)
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
    assert len(arrows) == len(rows) - 2  # between neighbours on a line of 10, none across the line break
