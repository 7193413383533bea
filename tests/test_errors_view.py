"""vislab.views.errors: the confusion matrix's cells and their images, and Grad-CAM for the predicted and the
true class of each, checked against grad-cam called the usual way."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from pytorch_grad_cam import GradCAM
from pytorch_grad_cam.utils.model_targets import ClassifierOutputTarget

from vislab.training.evaluation import Predictions
from vislab.views import errors


def _preds(labels, predicted, losses) -> Predictions:
    k = 3
    probs = np.full((len(labels), k), 0.1, np.float32)
    probs[np.arange(len(labels)), predicted] = 0.8
    return Predictions([f"img{i}.png" for i in range(len(labels))], np.asarray(labels), probs,
                       np.asarray(losses, np.float32))


def test_cells_list_the_non_empty_ones_errors_first_and_a_cell_its_images_by_loss():
    p = _preds([0, 0, 1, 1, 1, 2, 2, 0], [0, 1, 2, 2, 1, 2, 0, 1], [0.1, 2.0, 1.5, 3.0, 0.2, 0.3, 0.9, 2.5])
    cells = [(c.true, c.predicted, c.count) for c in errors.cells(p, 3)]
    assert cells == [(0, 1, 2), (1, 2, 2), (2, 0, 1), (0, 0, 1), (1, 1, 1), (2, 2, 1)]
    assert errors.in_cell(p, 0, 1) == [7, 1]  # loss 2.5, then 2.0
    assert errors.in_cell(p, 1, 2) == [3, 2]
    assert errors.in_cell(p, 2, 1) == []
    assert [c.count for c in errors.cells(_preds([0, 1], [0, 1], [0.1, 0.1]), 3) if c.error] == []


@pytest.fixture(scope="module")
def model_and_images(tmp_path_factory):
    from vislab.data.synthetic import make_synthetic
    from vislab.models.factory import create_model

    torch.manual_seed(0)
    root = make_synthetic(tmp_path_factory.mktemp("errs"), classes=3, per_class=2, size=64)
    paths = sorted(str(p) for p in root.rglob("*.png"))[:3]
    model, info = create_model("test_resnet", num_classes=3, img_size=64, weights_choice="random")
    with torch.no_grad():  # class 1's evidence is class 0's, negated: their Grad-CAMs can never be the same map
        model.fc.weight[1] = -model.fc.weight[0]  # (unless both are flat: the test checks that they are not)
        model.fc.bias[1] = -model.fc.bias[0]
    return model.eval(), info.data_config, paths


def test_the_two_maps_are_grad_cams_of_the_predicted_and_the_true_class(model_and_images):
    from vislab.views import base as views, cam

    model, cfg, paths = model_and_images
    layer = cam.default_layer(model, "test_resnet")
    predicted, true = [0, 1, 2], [1, 0, 2]  # the last image: predicted = true
    out = errors.explain_pairs(model, cfg, paths, predicted, true, layer)
    assert [e.path for e in out] == paths and [e.classes for e in out] == list(zip(predicted, true))
    from vislab.data.transforms import load_image

    x = views.batch([load_image(p) for p in paths], cfg)  # (3, 3, 64, 64)
    with torch.no_grad():
        probs = model(x).softmax(1).numpy()
    for which, classes in ((0, predicted), (1, true)):  # grad-cam called the usual way, per class
        with GradCAM(model=model, target_layers=[model.get_submodule(layer)]) as reference:
            ref = views.normalise_maps(reference(x, targets=[ClassifierOutputTarget(k) for k in classes]))
        got = np.stack([e.maps[which] for e in out])
        assert np.allclose(got, ref, atol=1e-4), np.abs(got - ref).max()
    for e, pr in zip(out, probs):
        assert np.allclose(e.probs, pr, atol=1e-5)
        assert all(o.size == e.crop.size == (64, 64) for o in e.overlays)
    differ = [float(np.abs(e.maps[0] - e.maps[1]).max()) for e in out]
    assert differ[0] > 0.1 and differ[1] > 0.1, differ  # other class, other map
    assert differ[2] == 0.0  # the same class: the same map


def test_a_cell_is_opened_a_dozen_images_at_most(model_and_images):
    model, cfg, paths = model_and_images
    many = (paths * 5)[:errors.MAX_IMAGES + 1]
    with pytest.raises(ValueError, match="at most 12"):
        errors.explain_pairs(model, cfg, many, [0] * len(many), [1] * len(many), "layer4")
    assert errors.explain_pairs(model, cfg, [], [], [], "layer4") == []
