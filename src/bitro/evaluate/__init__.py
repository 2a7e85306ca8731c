"""Evaluation: predicting a fold's test samples with its model, baseline predictors and the summaries.

The metrics themselves (PCC overall/gene, Spearman, RMSE, JS divergence) are :mod:`bitro.metrics`, shared
with training's validation scores; the folds and samples are :mod:`bitro.folds`.
"""
