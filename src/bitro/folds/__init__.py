"""What a fold is and what it holds, for training and evaluation alike.

- :mod:`bitro.folds.splits`: the folds of a cohort (``folds.json``);
- :mod:`bitro.folds.samples`: one sample's data, read once (:class:`~bitro.folds.samples.SampleData`);
- :mod:`bitro.folds.bags`: bags cut from a sample, their collation and the model's predictions on them;
- :mod:`bitro.folds.inputs`: a fold's samples and bags per role (:func:`~bitro.folds.inputs.load_fold`).

:mod:`bitro.train` and :mod:`bitro.evaluate` both build on this package and neither on the other's data
code, so the import graph between them runs one way (``evaluate`` loads the models ``train`` saved).
"""
