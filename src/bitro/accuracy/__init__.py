"""The accuracy benchmark (``make accuracy``): every model on identical folds of virtual cohorts.

- :mod:`bitro.accuracy.data`: a virtual sample (:mod:`bitro.demo.virtual`) as the model's
  :class:`~bitro.folds.samples.SampleData`, folds over patients.
- :mod:`bitro.accuracy.runs`: one model on one fold with one seed (BiTro and its ablations through the
  training loop the workflow uses, the baselines, the floors and the permutation null), cached.
- :mod:`bitro.accuracy.stats`: per-gene PCC per section, per-effect means and paired bootstrap intervals.
- :mod:`bitro.accuracy.report`: the tables and the figure.
"""
