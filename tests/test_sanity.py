"""The cascading-randomisation sanity check: the caller's model untouched, the measures right, a map that
depends on the weights falls apart while one that ignores the model does not, and `vislab explain --sanity`."""

import csv
import io

import numpy as np
import pytest
import skimage.data
import torch
from PIL import Image

from vislab import cli
from vislab.cli import explain as explain_command
from vislab.models import factory
from vislab.models.stages import stages
from vislab.training import runs
from vislab.views import base as views, cam, explain, sanity
from tests.test_explain import make_run

SIZE = 64


@pytest.fixture(scope="module")
def trained():
    """The seeded 3-class fine-tune of MobileNetV3-small (food / report / other) and the coffee photo, 64 px."""
    model, info = factory.create_model("mobilenet_v3_small", weights_choice="pretrained")
    x = views.batch([Image.fromarray(skimage.data.coffee())], info.data_config.with_size(SIZE))  # (1, 3, 64, 64)
    return model, x, info.data_config


def test_the_callers_model_is_untouched_and_the_check_is_reproducible(trained):
    model, x, _ = trained
    model.eval()
    model(x).sum().backward()  # the caller's own gradients: the check must leave them as they are
    model.train()  # and its train flags
    before = {k: v.clone() for k, v in model.state_dict().items()}
    grads = {n: p.grad.clone() for n, p in model.named_parameters() if p.grad is not None}
    rng = torch.get_rng_state()
    first = sanity.check(model, x, "GradCAM")
    assert all(torch.equal(before[k], v) for k, v in model.state_dict().items())
    assert {n: p.grad for n, p in model.named_parameters() if p.grad is not None}.keys() == grads.keys()
    assert all(torch.equal(grads[n], p.grad) for n, p in model.named_parameters() if p.grad is not None)
    assert model.training and torch.equal(rng, torch.get_rng_state())
    again = sanity.check(model, x, "GradCAM")  # the same seed: the same random weights, the same numbers
    assert np.array_equal([s.spearman for s in first[0]], [s.spearman for s in again[0]], equal_nan=True)
    assert all(np.array_equal(a.map, b.map) for a, b in zip(first[0], again[0]))
    model.zero_grad(set_to_none=True)
    model.eval()


def test_the_steps_go_head_first_down_to_the_stem(trained):
    model, x, _ = trained
    found = sanity.check(model, x, "GradCAM")[0]
    names = [s.name for s in stages(model)]  # definition order, the head last
    assert [s.stage for s in found] == ["", *reversed(names)]
    assert [s.layers_randomised for s in found] == list(range(len(names) + 1))
    assert [s.name for s in found[:3]] == ["original", "head", f"head + {names[-2]}"]
    assert found[-1].name.startswith("every layer")
    assert found[-1].modules_randomised == sum(1 for m in model.modules() if list(m.parameters(recurse=False)))


def test_a_map_against_itself_scores_1_and_the_measures_match_their_definitions(trained):
    model, x, _ = trained
    original = sanity.check(model, x, "GradCAM")[0][0].map  # step 0
    again = sanity.cam_maps("GradCAM")(model, x, [int(model.eval()(x).argmax())])[0]  # recomputed
    assert sanity.spearman(original, again) == pytest.approx(1.0) and sanity.ssim(original, again) == pytest.approx(1.0)
    rng = np.random.default_rng(0)
    a, b = rng.random((32, 32)), rng.random((32, 32))  # no ties: rank = argsort of argsort
    ra, rb = a.ravel().argsort().argsort(), b.ravel().argsort().argsort()
    assert sanity.spearman(a, b) == pytest.approx(np.corrcoef(ra, rb)[0, 1], abs=1e-12)
    assert sanity.spearman(a, a ** 3) == pytest.approx(1.0)  # ranks only: any increasing function of the map
    assert sanity.spearman(a, 1 - a) == pytest.approx(-1.0)
    assert sanity.ssim(a, 1 - a) < 0 and sanity.ssim(a, a) == pytest.approx(1.0)
    assert np.isnan(sanity.spearman(a, np.zeros_like(a)))  # a flat map has no ranking to compare


def test_grad_cam_on_a_fine_tuned_model_falls_apart_when_its_weights_are_random(trained):
    model, x, _ = trained
    found = sanity.check(model, x, "GradCAM")
    last = found[0][-1]
    assert last.name.startswith("every layer") and last.spearman < 0.5
    assert "unrelated to the original" in sanity.sentence(found, "Grad-CAM")


def test_a_map_that_ignores_the_model_survives_every_step_and_is_flagged(trained):
    """The image's own brightness as a 'map': randomising the model cannot change it, and the check says so."""
    model, x, _ = trained

    def brightness(net, images, classes):
        return views.normalise_maps(images.mean(1).numpy())  # (B, H, W)

    found = sanity.cascade(model, x, brightness)[0]
    assert len(found) == len(stages(model)) + 1
    assert all(s.spearman == pytest.approx(1.0) and s.ssim == pytest.approx(1.0) for s in found)
    said = sanity.sentence([found], "Brightness")
    assert said.startswith("Warning: with every layer randomised") and "1.00" in said


def _steps(rhos):
    n = len(rhos)
    return [sanity.Step(0, k, "every layer" if k == n - 1 else f"step {k}", f"s{k}", k, k, r, r, np.zeros((2, 2)))
            for k, r in enumerate(rhos)]


def test_the_sentence_names_the_first_step_below_the_threshold():
    assert sanity.sentence([_steps([1, 0.9, 0.8, 0.7, 0.3, 0.2])], "Grad-CAM") == (
        "After randomising the head and the last 3 stages, Grad-CAM's map is unrelated to the original (rank "
        "correlation 0.30 < 0.5): it depends on the learned weights.")
    assert sanity.sentence([_steps([1, 0.1, 0.2])], "X").startswith("After randomising the head, X's map is unrelated")
    assert sanity.sentence([_steps([1, 0.3, 0.7, 0.2, 0.1])], "X").startswith(  # it came back at step 2
        "After randomising the head and the last 2 stages, X's map is unrelated")
    assert sanity.sentence([_steps([1, 0.9, 0.6])], "X").startswith(
        "Warning: with every layer randomised, X's map still has a rank correlation of 0.60")
    assert "the map is flat" in sanity.sentence([_steps([1, 0.9, float("nan")])], "X")
    assert "mean over 2 images" in sanity.sentence([_steps([1, 0.9, 0.2]), _steps([1, 0.9, 0.4])], "X")


def test_the_strip_is_a_png_with_a_panel_per_step(trained):
    model, x, cfg = trained
    found = sanity.check(model, x, "GradCAM")[0]
    picture = sanity.crops(x, cfg.mean, cfg.std)  # (1, 64, 64, 3)
    assert picture.shape == (1, SIZE, SIZE, 3) and 0 <= picture.min() and picture.max() <= 1

    wide = Image.open(io.BytesIO(sanity.strip_png(found, picture[0], "Grad-CAM", cols=len(found))))
    rows = Image.open(io.BytesIO(sanity.strip_png(found, picture[0], "Grad-CAM", cols=4)))
    assert wide.format == "PNG" and wide.width > 2 * rows.width and rows.height > 2 * wide.height * 0.8
    assert sanity.titles(found)[0] == "original" and f"rho {found[1].spearman:.2f}" in sanity.titles(found)[1]


@pytest.fixture(scope="module")
def folders(tmp_path_factory):
    root = tmp_path_factory.mktemp("sanity")
    rng = np.random.default_rng(0)
    Image.fromarray(rng.integers(0, 255, (73, 73, 3), dtype=np.uint8)).save(root / "square.png")  # crop: 4..67
    Image.fromarray(rng.integers(0, 255, (90, 120, 3), dtype=np.uint8)).save(root / "wide.jpg")
    return {"root": root, "images": [str(root / "square.png"), str(root / "wide.jpg")],
            "cnn": make_run(root / "cnn", "test_resnet"), "se": make_run(root / "se", "test_efficientnet"),
            "vit": make_run(root / "vit", "test_vit")}


def call(*argv):
    try:
        return cli.main(["explain", *map(str, argv)])
    except SystemExit as exc:
        return exc.code


@pytest.mark.parametrize("view", ["gradcam", "cam"])
def test_cli_sanity_writes_a_row_per_image_and_step_and_a_strip_per_image(folders, tmp_path, view):
    out = tmp_path / "out"
    assert call("--run", folders["cnn"], "--view", view, "--images", *folders["images"], "--out", out, "--sanity") == 0
    model, run = runs.load(folders["cnn"])
    steps = len(stages(model)) + 1  # the original and one per stage
    rows = list(csv.DictReader((out / "sanity.csv").open()))
    assert set(explain.SANITY_COLUMNS) >= {"image", "view", "step", "step_name", "layers_randomised", "spearman", "ssim"}
    assert list(rows[0]) == list(explain.SANITY_COLUMNS) and len(rows) == 2 * steps
    assert [(r["image"], int(r["step"])) for r in rows] == [(i, k) for i in ("square", "wide") for k in range(steps)]
    assert {r["view"] for r in rows} == {view} and {r["step_name"] for r in rows if r["step"] == "1"} == {"head"}
    assert all(float(r["spearman"]) == 1 and float(r["ssim"]) == 1 for r in rows if r["step"] == "0")
    for stem in ("square", "wide"):
        assert Image.open(out / f"{stem}_{view}_sanity.png").format == "PNG"
    # the map the check starts from is the one the command saved (the 64 x 64 crop sits at 4..67 of the file)
    img = Image.open(folders["images"][0]).convert("RGB")
    x = views.batch([img], run.data_config)
    layer = cam.default_layer(model, "test_resnet")
    found = sanity.check(model, x, explain.CAM_VIEWS[view], layer)[0]
    assert np.allclose(np.load(out / f"square_{view}.npy")[4:68, 4:68], found[0].map, atol=1e-5)
    assert [s.spearman for s in found] == pytest.approx([float(r["spearman"]) for r in rows[:steps]], abs=1e-3,
                                                             nan_ok=True)


def test_cli_sanity_refuses_views_that_are_no_cam_with_one_line_and_writes_nothing(folders, tmp_path, capsys):
    assert explain_command.CAM_VIEWS == tuple(explain.CAM_VIEWS)  # the parser's spelling agrees with the library's
    out = tmp_path / "out"
    images = folders["images"]
    for argv in [("--run", folders["se"], "--view", "se"), ("--run", folders["vit"], "--view", "attention"),
                 ("--run", folders["cnn"], "--view", "features"),
                 ("--run", folders["cnn"], "--view", "gradcam", "--images", str(folders["root"] / "nope.png"))]:
        capsys.readouterr()
        extra = () if "--images" in argv else ("--images", *images)
        assert call(*argv, *extra, "--out", out, "--sanity") == 2, argv
        err = capsys.readouterr().err
        assert err.count("\n") == 1 and err.startswith("vislab: error:") and "Traceback" not in err, err
        assert ("no such file" in err) if "--images" in argv else ("--sanity checks a class activation map" in err)
        assert not out.exists()
    model, run = runs.load(folders["se"])
    loaded = explain.Loaded(model, run.data_config, run.classes, "test_efficientnet")
    with pytest.raises(explain.ExplainError, match="--sanity checks a class activation map"):  # the library too
        explain.sanity(loaded, "se", [("square", Image.open(images[0]).convert("RGB"))])
