"""Evaluation: metrics (PCC overall/gene, Spearman, RMSE, JS divergence) and baseline predictors."""
