import json
import math

import numpy as np
import pytest

from napari_ssmamba.training.evaluate import (
    binary_auroc,
    classification_metrics,
    format_metrics,
    write_metrics,
)


def test_metrics_on_a_worked_example():
    y = [0, 0, 0, 1, 1, 2]
    probs = np.array([[0.8, 0.1, 0.1], [0.6, 0.3, 0.1], [0.2, 0.7, 0.1],
                      [0.1, 0.8, 0.1], [0.5, 0.4, 0.1], [0.1, 0.1, 0.8]])
    m = classification_metrics(y, probs, ["a", "b", "c"])
    assert m["confusion_matrix"] == [[2, 1, 0], [1, 1, 0], [0, 0, 1]]
    assert m["accuracy"] == pytest.approx(4 / 6)
    assert m["balanced_accuracy"] == pytest.approx((2 / 3 + 1 / 2 + 1) / 3)
    # F1: a = 2*(2/3*2/3)/(4/3) = 2/3; b = 2*(1/2*1/2)/1 = 1/2; c = 1
    assert m["macro_f1"] == pytest.approx((2 / 3 + 1 / 2 + 1) / 3)
    assert m["per_class"]["c"]["auroc"] == 1.0
    # class a scores: positives .8 .6 .2 vs negatives .1 .5 .1 -> 8 of 9 pairs ordered
    assert m["per_class"]["a"]["auroc"] == pytest.approx(8 / 9)


def test_auroc_ties_and_undefined():
    assert binary_auroc(np.array([1, 0]), np.array([0.5, 0.5])) == 0.5
    assert math.isnan(binary_auroc(np.array([1, 1]), np.array([0.2, 0.3])))
    rng = np.random.default_rng(0)
    labels, scores = rng.integers(0, 2, 200).astype(bool), rng.random(200)
    pairs = (scores[labels][:, None] > scores[~labels][None, :]).mean()
    assert binary_auroc(labels, scores) == pytest.approx(pairs)


def test_absent_class_gives_null_auroc_and_json(tmp_path):
    m = classification_metrics(
        [0, 0, 1], np.array([[0.9, 0.1, 0], [0.4, 0.6, 0], [0.2, 0.8, 0]]), ["x", "y", "z"]
    )
    assert m["per_class"]["z"]["auroc"] is None and m["classes_without_tiles"] == ["z"]
    assert m["balanced_accuracy"] == pytest.approx((0.5 + 1) / 2)
    path = write_metrics(m, tmp_path / "eval.json")
    assert json.loads(path.read_text())["confusion_matrix"][0] == [1, 1, 0]
    table = format_metrics(m)
    assert "balanced_accuracy=0.7500" in table and "confusion" in table
    assert "not measured, no tiles here: z" in table
