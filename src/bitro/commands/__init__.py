"""Verbs that work on a cohort or a fold (gene selection, splits, phenotypes, training), by stage."""
