"""A trained model's scores on its fold's validation bags, as ``model.json`` records them.

PCC gene is :func:`bitro.metrics.pcc_gene`, the one the test metrics use: a gene constant in truth or
prediction, or a fold of fewer than 2 validation units (a single bulk slide), has no correlation. Such a
gene is counted in ``n_undefined_genes`` and left out of the mean; a fold where every gene is undefined
has no PCC gene at all, recorded as ``null``, never as a made-up 0. The training-mean predictor is
constant, so its PCC gene is always ``null``.

Model selection never rests on PCC gene: early stopping (:func:`bitro.train.fit.fit`) keeps the round with
the lowest validation gene loss (MSE on the training-standardised targets), which is a number for every
fold, including one where every gene is constant. Nothing is written here.
"""

from __future__ import annotations

import math
from typing import Any

import numpy as np

from bitro.folds.bags import predict_bags
from bitro.folds.inputs import FoldInputs
from bitro.genes.normalise import TargetTransform
from bitro.metrics import pcc_gene
from bitro.model.bitro import BiTro


def _number(value: float) -> float | None:
    """A score as JSON records it: ``None`` (``null``) where it is undefined."""
    return None if math.isnan(value) else value


def validation_scores(
    model: BiTro,
    inputs: FoldInputs,
    transform: TargetTransform,
    *,
    device: str = "cpu",
) -> dict[str, Any]:
    """Model and training-mean predictor on the validation bags, in log1p space (units × genes)."""
    bags = inputs.bags["validation"]
    truth = np.log1p(inputs.targets("validation"))
    predicted = transform.to_log1p(predict_bags(model, bags, inputs.samples, device=device))
    mean = np.broadcast_to(transform.mean, truth.shape)
    scores = pcc_gene(truth, predicted)
    return {
        "space": f"log1p {transform.space}",
        "n_units": len(bags),
        "model": {
            "pcc_gene": _number(scores.mean),
            "n_undefined_genes": scores.n_undefined,
            "mse": float(((predicted - truth) ** 2).mean()),
        },
        "training_mean": {
            "pcc_gene": _number(pcc_gene(truth, mean).mean),
            "mse": float(((mean - truth) ** 2).mean()),
        },
    }
