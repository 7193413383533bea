"""Deletion and insertion scores rank a map that points at the evidence above one that points away from it."""

import numpy as np
import pytest
import torch
import torch.nn as nn

from vislab.views import faithfulness

SIZE = 32


class Corner(nn.Module):
    """Class 0's logit grows with the brightness of the top-left 8 x 8 corner: the evidence is known."""

    def __init__(self):
        super().__init__()
        self.scale = nn.Parameter(torch.tensor(8.0))
        self.drop = nn.Dropout(0.5)  # must be off while scoring

    def forward(self, x):
        s = self.drop(x[:, 0, :8, :8].mean((1, 2)) - x[:, 0].mean((1, 2)))  # (B,)
        return torch.stack([self.scale * s, -self.scale * s], 1)  # (B, 2)


@pytest.fixture
def case():
    x = torch.zeros(1, 3, SIZE, SIZE)
    x[:, :, :8, :8] = 1.0  # the object: a bright corner
    truth = np.zeros((SIZE, SIZE), np.float32)
    truth[:8, :8] = 1.0
    return Corner().train(), x, truth


def test_a_map_on_the_evidence_beats_one_pointing_away_and_the_baselines(case):
    model, x, truth = case
    good = faithfulness.score(model, x, truth, target=0)
    backwards = faithfulness.score(model, x, 1 - truth, target=0)
    assert good.deletion_auc < backwards.deletion_auc and good.insertion_auc > backwards.insertion_auc
    scores = faithfulness.with_baselines(model, x, truth, target=0)
    for baseline in ("random", "centre"):
        assert scores["map"].deletion_auc < scores[baseline].deletion_auc
        assert scores["map"].insertion_auc > scores[baseline].insertion_auc


def test_the_curves_start_and_end_where_they_must_and_the_model_is_untouched(case):
    model, x, truth = case
    before = {k: v.clone() for k, v in model.state_dict().items()}
    s = faithfulness.score(model, x, truth, target=0, steps=10)
    assert len(s.deletion) == len(s.insertion) == 11
    with torch.no_grad():
        p_image = model.eval()(x).softmax(1)[0, 0].item()
        p_fill = model(faithfulness.blurred(x)).softmax(1)[0, 0].item()
    model.train()
    assert s.deletion[0] == pytest.approx(p_image, abs=1e-6) and s.insertion[-1] == pytest.approx(p_image, abs=1e-6)
    assert s.deletion[-1] == pytest.approx(p_fill, abs=1e-6) and s.insertion[0] == pytest.approx(p_fill, abs=1e-6)
    assert s.deletion_auc == pytest.approx(sum((a + b) / 2 * 0.1 for a, b in zip(s.deletion, s.deletion[1:])))
    assert model.training and model.drop.training  # flags put back
    assert all(torch.equal(before[k], v) for k, v in model.state_dict().items())


def test_a_map_of_the_wrong_size_is_refused(case):
    model, x, truth = case
    with pytest.raises(ValueError, match="resize the map"):
        faithfulness.score(model, x, truth[:16], target=0)
