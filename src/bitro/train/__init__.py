"""Training (paper Appendix C.2, §3.5): one pipeline for training from scratch, pretraining and fine-tuning.

- :mod:`~bitro.train.pipeline`: build, optional initial weights, optional LoRA adapter, fit, score, save;
- :mod:`~bitro.train.run`, :mod:`~bitro.train.pretrain`, :mod:`~bitro.train.finetune`: the three runs
  (``bitro train``, ``bitro transfer-pretrain``, ``bitro transfer``), from the pipeline's files;
- :mod:`~bitro.train.fit`: the training loop; :mod:`~bitro.train.config`: its settings and result;
- :mod:`~bitro.train.state`: the resume state and the one stale-resume rule;
- :mod:`~bitro.train.saved`: model folders on disk (plain and LoRA) and ``model.json``;
- :mod:`~bitro.train.validation`: the validation scores ``model.json`` records;
- :mod:`~bitro.train.transfer`: transfer policy (patients, genes by name, the pretraining split).

The data a fold holds (splits, samples, bags) is :mod:`bitro.folds`.
"""
