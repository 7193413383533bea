"""`vislab explain`: files for every view that applies, the page's own maps in them, bad arguments refused."""

import numpy as np
import pytest
import torch
from PIL import Image

from vislab import cli
from vislab.views import attention, cam, explain, se, base as views
from vislab.training import runs
from vislab.models.build import build_architecture
from vislab.models.heads import attach_head
from vislab.data.config import DataConfig, resize_for

CFG = DataConfig((3, 64, 64))  # crop_pct 0.875: short side to 73, then the center 64 x 64
SQUARE = resize_for(CFG)  # a 73 x 73 image: the crop is pixels 4..67 of it, one to one


def make_run(folder, arch: str, head: str = "linear"):
    torch.manual_seed(0)
    model = attach_head(build_architecture(arch), 3, head)
    if hasattr(model, "set_input_size"):
        model.set_input_size(img_size=(64, 64))
    runs.save(folder, model, {"model": arch, "head_kind": head, "data_config": CFG.to_dict()}, [],
              ["red", "green", "blue"])
    return folder


@pytest.fixture(scope="module")
def folders(tmp_path_factory):
    root = tmp_path_factory.mktemp("explain")
    rng = np.random.default_rng(0)
    Image.fromarray(rng.integers(0, 255, (SQUARE, SQUARE, 3), dtype=np.uint8)).save(root / "square.png")
    Image.fromarray(rng.integers(0, 255, (90, 120, 3), dtype=np.uint8)).save(root / "wide.jpg")
    return {"root": root, "images": [str(root / "square.png"), str(root / "wide.jpg")],
            "cnn": make_run(root / "cnn", "test_resnet"), "vit": make_run(root / "vit", "test_vit"),
            "se": make_run(root / "se", "test_efficientnet"),
            "hybrid": make_run(root / "hybrid", "test_resnet", "attention")}  # a CNN with the attention head


def call(*argv):
    try:
        return cli.main(["explain", *map(str, argv)])
    except SystemExit as exc:  # argparse's errors
        return exc.code


@pytest.mark.parametrize("kind, view", [("cnn", v) for v in ("cam", "gradcam", "gradcampp", "layercam", "features")]
                         + [("vit", "attention"), ("vit", "rollout"), ("hybrid", "attention"), ("hybrid", "rollout"),
                            ("se", "se")])
def test_every_view_that_applies_writes_a_png_and_a_map_per_image(folders, tmp_path, kind, view):
    tmp_path = tmp_path / "out"
    assert call("--run", folders[kind], "--view", view, "--images", *folders["images"], "--out", tmp_path) == 0
    for path, size in zip(folders["images"], [(SQUARE, SQUARE), (120, 90)]):
        stem = path.rsplit("/", 1)[-1].split(".")[0]
        png = Image.open(tmp_path / f"{stem}_{view}.png")
        arr = np.load(tmp_path / f"{stem}_{view}.npy")
        assert arr.dtype == np.float32
        if view == "se":
            assert arr.ndim == 2 and np.nanmax(arr) <= 1 and np.nanmin(arr) >= 0
        else:
            assert arr.shape == (size[1], size[0])
            assert png.size == size or view == "features"  # features: the page's grid of the top 16 channels
            assert 0 <= arr.min() and arr.max() <= 1 and arr.max() > 0.5
    assert sorted(p.name for p in tmp_path.iterdir()) == sorted(
        f"{s}_{view}.{e}" for s in ("square", "wide") for e in ("png", "npy"))


def page_inputs(folders, kind):
    model, run = runs.load(folders[kind])
    img = Image.open(folders["images"][0]).convert("RGB")
    return model, run, img, views.batch([img], run.data_config)  # (1, 3, 64, 64), as the page batches


def test_the_saved_map_is_the_cam_pages_own(folders, tmp_path):
    model, run, img, x = page_inputs(folders, "cnn")
    default = cam.default_layer(model, "test_resnet")
    page = cam.explain(model, x, run.classes, ["GradCAM"], [default], classic_layer=default).results[0].maps[0]
    assert call("--run", folders["cnn"], "--view", "gradcam", "--images", folders["images"][0], "--out", tmp_path) == 0
    saved = np.load(tmp_path / "square_gradcam.npy")  # (73, 73): the 64 x 64 crop sits at 4..67
    assert np.allclose(saved[4:68, 4:68], page, atol=1e-5)
    assert saved[:4].max() == 0 and saved[68:].max() == 0 and saved[:, :4].max() == 0  # the model saw nothing there


def test_the_saved_rollout_and_gates_are_the_pages_own(folders, tmp_path):
    for kind, discard in (("vit", 0.9), ("hybrid", 0.0)):  # the Attention page's default discard for each
        model, run, img, x = page_inputs(folders, kind)
        found = attention.view(model, x)
        assert found.hybrid == (kind == "hybrid")
        page = views.fit_map(found.rollout("mean", discard), (64, 64))
        last = views.fit_map(found.cls()[-1].mean(0), (64, 64))
        for view, want in (("rollout", page), ("attention", last)):
            out = tmp_path / kind
            assert call("--run", folders[kind], "--view", view, "--images", folders["images"][0], "--out", out) == 0
            assert np.allclose(np.load(out / f"square_{view}.npy")[4:68, 4:68], want, atol=1e-5), (kind, view)

    model, run, img, x = page_inputs(folders, "se")
    page = se.se_gates(model, x).matrix(0)
    assert call("--run", folders["se"], "--view", "se", "--images", folders["images"][0], "--out", tmp_path) == 0
    assert np.allclose(np.load(tmp_path / "square_se.npy"), page, equal_nan=True)


def test_bad_arguments_exit_2_with_one_line_and_write_nothing(folders, tmp_path, capsys):
    out = tmp_path / "out"
    images = folders["images"]
    bad = [
        ("--run", folders["cnn"], "--view", "gradcam", "--images", images[0], str(folders["root"] / "nope.png"), "--out", out),
        ("--run", folders["root"], "--view", "gradcam", "--images", *images, "--out", out),  # not a run folder
        ("--run", folders["root"] / "missing", "--view", "cam", "--images", *images, "--out", out),
        ("--run", folders["cnn"], "--view", "attention", "--images", *images, "--out", out),  # a CNN: no attention
        ("--run", folders["cnn"], "--view", "se", "--images", *images, "--out", out),  # no SE blocks
        ("--run", folders["cnn"], "--view", "cam", "--images", *images, "--out", images[0]),  # --out is a file
        ("--run", folders["cnn"], "--view", "cam", "--images", images[0], images[0], "--out", out),  # one stem twice
    ]
    for argv in bad:
        capsys.readouterr()
        assert call(*argv) == 2, argv
        err = capsys.readouterr().err
        assert err.count("\n") == 1 and err.startswith("vislab: error:") and "Traceback" not in err, err
        assert not out.exists()
    assert call("--model", "resnet18", "--view", "saliency", "--images", images[0], "--out", out) == 2  # argparse's
    assert not out.exists()
    model, run = runs.load(folders["cnn"])
    loaded = explain.Loaded(model, run.data_config, run.classes, "test_resnet")
    with pytest.raises(explain.ExplainError, match="unknown view 'saliency'"):  # the library, called directly
        explain.compute(loaded, "saliency", [("square", Image.open(images[0]).convert("RGB"))])


def test_vislab_explain_is_a_cli_command_with_one_line_errors(tmp_path, capsys):
    code = cli.main(["explain", "--model", "test_resnet", "--view", "cam", "--images", str(tmp_path / "none.png"),
                     "--out", str(tmp_path / "out")])
    assert code == 2 and "no such file" in capsys.readouterr().err
    assert not (tmp_path / "out").exists()


def test_scores_rank_each_map_beside_a_random_and_a_centred_one(folders, tmp_path, capsys):
    """--scores writes one row per image: the map's deletion and insertion AUC for the predicted class and the
    two baselines', numbers in [0, 1]; the SE gates (no map) are refused before any file is written."""
    import csv

    out = tmp_path / "scored"
    assert call("--run", folders["cnn"], "--view", "gradcam", "--images", *folders["images"], "--out", out,
                "--scores") == 0
    rows = list(csv.DictReader((out / "scores.csv").open()))
    assert [r["image"] for r in rows] == ["square", "wide"] and {r["view"] for r in rows} == {"gradcam"}
    for r in rows:
        assert r["target"] in ("red", "green", "blue") and r["fill"] == "blur" and r["steps"] == "20"
        for key in explain.SCORE_COLUMNS[3:9]:
            assert 0.0 <= float(r[key]) <= 1.0
    # the square image's row is its saved map's own score (the 64 x 64 crop sits at 4..67 of the 73 x 73 file)
    model, run, img, x = page_inputs(folders, "cnn")
    from vislab.views import faithfulness

    target = int(model.eval()(x).argmax(1)[0])
    own = faithfulness.score(model, x, np.load(out / "square_gradcam.npy")[4:68, 4:68], target)
    assert float(rows[0]["deletion_auc"]) == pytest.approx(own.deletion_auc, abs=1e-4)
    assert float(rows[0]["insertion_auc"]) == pytest.approx(own.insertion_auc, abs=1e-4)
    refused = tmp_path / "refused"
    assert call("--run", folders["se"], "--view", "se", "--images", *folders["images"], "--out", refused,
                "--scores") == 2
    assert "--scores needs a map" in capsys.readouterr().err and not refused.exists()
