"""Issue 26's done criterion on images the lab has never seen: the class is decided by one small object at a
known place (`synthetic.make_objects`), the model is trained head only, and on held-out images Grad-CAM must
beat a random map on deletion and insertion, beat its own backwards map, and fall apart (Spearman < 0.5)
once the sanity check has randomised every layer. bench/heatmaps.py measures the same at full size."""

import json
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from vislab.data import synthetic

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "bench"))

SIZE = 96


def test_the_object_is_where_the_json_says_and_nowhere_else(tmp_path):
    root = synthetic.make_objects(tmp_path / "a", per_class=4, size=64, seed=3)
    meta = json.loads((root / synthetic.BOXES).read_text())
    assert meta["classes"] == list(synthetic.OBJECTS) and len(meta["boxes"]) == 12
    for name, (x0, y0, x1, y1) in meta["boxes"].items():
        img = np.asarray(Image.open(root / name).convert("RGB")).astype(np.int16)  # (H, W, 3)
        colour = np.array(synthetic.OBJECT_COLOURS[name.split("/")[0]])
        painted = np.abs(img - colour).max(2) <= 8  # the object's own colour (the background is muted)
        ys, xs = np.nonzero(painted)
        assert xs.min() >= x0 and xs.max() <= x1 and ys.min() >= y0 and ys.max() <= y1  # inside its box
        assert painted[y0:y1 + 1, x0:x1 + 1].mean() > 0.4  # and fills it (a triangle: about half)
        assert 0.08 * 64 <= x1 - x0 + 1 <= 0.16 * 64
    again = synthetic.make_objects(tmp_path / "b", per_class=4, size=64, seed=3)
    other = synthetic.make_objects(tmp_path / "c", per_class=4, size=64, seed=4)
    first = (root / "disc" / "img_000.png").read_bytes()
    assert (again / "disc" / "img_000.png").read_bytes() == first  # deterministic by seed
    assert (other / "disc" / "img_000.png").read_bytes() != first
    assert json.loads((other / synthetic.BOXES).read_text())["boxes"] != meta["boxes"]


def test_the_dataset_scan_sees_the_classes_and_ignores_the_boxes_file(tmp_path):
    from vislab.data import folders

    report = folders.load_dataset(synthetic.make_objects(tmp_path / "objects", per_class=2, size=64))
    assert report.usable and report.classes == list(synthetic.OBJECTS) and not report.skipped
    assert len(report.items) == 6


@pytest.fixture(scope="module")
def measured(tmp_path_factory):
    """Head-only training of the seeded MobileNetV3-small on 3 x 12 generated images (96 px, 3 epochs), then
    Grad-CAM scored on 3 x 4 held-out images; the model's weights before and after the scoring."""
    import heatmaps

    work = tmp_path_factory.mktemp("heatmaps")
    trained = heatmaps.train(work, "mobilenet_v3_small", SIZE, per_class=12, epochs=3, seed=0, lr=1e-2)
    before = {k: v.clone() for k, v in trained.model.state_dict().items()}
    result = heatmaps.measure(work, size=SIZE, test_per_class=4, epochs=3, trained=trained)
    return result, before, trained.model


def test_the_model_learned_the_objects_and_grad_cam_points_at_them(measured):
    result, _, _ = measured
    s = result["summary"]
    assert result["test_acc"] > 0.6  # on held-out images (chance: 1/3)
    assert s["mass_in_box"]["mean"] > 1.5 * s["box_share"]["mean"]  # the map's mass: more on the object than a
    # flat map puts there (a model that cannot use the object, e.g. the same disc in every class, gets 1x)


def test_grad_cam_beats_the_random_map_on_deletion_and_insertion(measured):
    s = measured[0]["summary"]
    assert s["gradcam_deletion"]["mean"] < s["random_deletion"]["mean"]
    assert s["gradcam_insertion"]["mean"] > s["random_insertion"]["mean"]


def test_a_map_that_ranks_pixels_backwards_scores_worse(measured):
    s = measured[0]["summary"]
    assert s["backwards_deletion"]["mean"] > s["gradcam_deletion"]["mean"]
    assert s["backwards_insertion"]["mean"] < s["gradcam_insertion"]["mean"]


def test_grad_cam_falls_apart_once_every_layer_is_random_and_the_model_is_untouched(measured):
    result, before, model = measured
    assert result["steps_randomised"] >= 10  # the head and every stage down to the stem
    assert len(result["per_image"]["spearman_all_random"]) == result["test_images"] == 12
    assert np.nanmean(result["per_image"]["spearman_all_random"]) < 0.5
    assert all(torch.equal(before[k], v) for k, v in model.state_dict().items())  # scores and check: on copies
