"""Transfer (paper §3.5): genes aligned by name, LoRA leaves the base untouched, adapters reload, no leaks."""

from __future__ import annotations

import json
from dataclasses import replace
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import torch

from bitro._hashing import file_sha256
from bitro.bundle import export_bundle, load_bundle, zip_path
from bitro.cli import main
from bitro.errors import InputError
from bitro.folds.bags import collate, make_bags, predict_bags
from bitro.folds.inputs import FoldInputs, load_fold
from bitro.folds.splits import Fold, leave_one_out, read_folds, spatial_strips, write_folds
from bitro.genes.normalise import TargetTransform
from bitro.model.bitro import BiTro, BiTroConfig
from bitro.train.config import TrainConfig
from bitro.train.finetune import transfer_fold
from bitro.train.pipeline import LoraOptions, Start, train_model
from bitro.train.pretrain import pretrain
from bitro.train.saved import ADAPTER_FILE, LORA_FORMAT, load_model, load_trained, save_model, save_trained
from bitro.train.state import fingerprint
from bitro.train.transfer import (
    PatientOverlapError,
    check_no_shared_patients,
    per_gene_tensors,
    pretraining_fold,
    sample_patients,
    select_model_genes,
    transfer_genes,
)
from tiny_cohorts import GENES, TINY, UNIVERSE, synthetic_sample, write_cohort

#: The pretrained model's genes: the target's (GENES) shuffled, plus two the target lacks.
SOURCE_GENES = ["G5", "Q1", "G2", "G0", "G1", "G4", "Q2", "G3"]


def _pretrained(n_genes: int = len(SOURCE_GENES), seed: int = 3) -> BiTro:
    torch.manual_seed(seed)
    return BiTro(BiTroConfig(n_genes=n_genes, in_dim=16, **TINY)).eval()


def _target_fold():
    samples = [synthetic_sample(s) for s in (11, 12, 13)]
    train = make_bags(samples[0], 0) + make_bags(samples[1], 1)
    validation = make_bags(samples[2], 2)
    rows = np.stack([samples[b.sample].targets[b.target_row] for b in train])
    return samples, train, validation, TargetTransform.fit(rows, GENES)


def _finetune(tmp_path: Path, mode: str, pretrained: BiTro | None = None):
    samples, train, validation, transform = _target_fold()
    config = TrainConfig(
        lr=3e-3, max_steps=10, patience_steps=50, eval_every_steps=1, batch_bags=16, lambda_cluster=0.1
    )
    pretrained = pretrained or _pretrained()
    start = Start(model=pretrained, genes=tuple(SOURCE_GENES), lora=LoraOptions() if mode == "lora" else None)
    done = train_model(start, GENES, train, validation, samples, transform, config, tmp_path, progress=False)
    return done, samples, validation, transform


@pytest.fixture(scope="module")
def lora_run(tmp_path_factory):
    pretrained = _pretrained()
    before = {k: v.clone() for k, v in pretrained.state_dict().items()}
    done, samples, validation, transform = _finetune(tmp_path_factory.mktemp("lora"), "lora", pretrained)
    return pretrained, before, done, samples, validation, transform


# ------------------------------------------------------------------------------------------------ genes


def test_gene_intersection_is_by_name_and_queries_follow_their_gene() -> None:
    assert transfer_genes(["B", "A", "C", "Z"], ["C", "Y", "A"]) == ["A", "C"]
    assert transfer_genes(["B", "A", "C"], ["A", "C"]) == transfer_genes(["C", "A", "B"], ["C", "A"])
    with pytest.raises(ValueError, match="share no gene"):
        transfer_genes(["A"], ["B"])
    with pytest.raises(ValueError, match="more than once"):
        transfer_genes(["A", "A"], ["A"])

    pretrained = _pretrained()
    per_gene = ["mil.queries", "mil.readout.gene_bias", "mil.readout.gene_weights"]
    assert sorted(per_gene_tensors(pretrained.config)) == per_gene
    genes = transfer_genes(SOURCE_GENES, GENES)
    assert genes == sorted(GENES)
    aligned = select_model_genes(pretrained, SOURCE_GENES, genes)
    assert aligned.config.n_genes == len(genes)
    for row, gene in enumerate(genes):
        source = SOURCE_GENES.index(gene)
        assert torch.equal(aligned.mil.queries[row], pretrained.mil.queries[source])
        weights = aligned.mil.readout.gene_weights
        assert torch.equal(weights[row], pretrained.mil.readout.gene_weights[source])
    # Every weight that is not per-gene is copied unchanged.
    for name, tensor in aligned.state_dict().items():
        if name not in per_gene:
            assert torch.equal(tensor, pretrained.state_dict()[name]), name
    # The aligned model predicts, for each gene, what the pretrained model predicts for that name.
    sample = synthetic_sample(21, n_units=12)
    batch, _, _ = collate(make_bags(sample, 0), [sample])
    with torch.no_grad():
        before = pretrained(batch).prediction.numpy()
        after = aligned(batch).prediction.numpy()
    columns = [SOURCE_GENES.index(g) for g in genes]
    np.testing.assert_allclose(after, before[:, columns], rtol=1e-6, atol=1e-6)
    with pytest.raises(ValueError, match="not predicted"):
        select_model_genes(pretrained, SOURCE_GENES, ["G0", "NOPE"])


# ------------------------------------------------------------------------------------------- fine-tuning


def test_lora_keeps_every_base_weight_and_trains_only_adapters_and_head(lora_run) -> None:
    pretrained, before, done, *_ = lora_run
    # The pretrained model itself is never touched.
    for name, tensor in pretrained.state_dict().items():
        assert torch.equal(tensor, before[name]), name
    base = select_model_genes(pretrained, SOURCE_GENES, GENES).state_dict()
    assert all(torch.equal(done.base.state_dict()[k], v) for k, v in base.items())
    changed, lora_names = set(), set()
    for name, tensor in done.model.state_dict().items():
        if "lora_" in name:
            lora_names.add(name)
            continue
        plain = name.replace(".base_layer.", ".")
        if not torch.equal(tensor, base[plain]):
            changed.add(plain)
    # Bit-identical base: only the task head (gene queries, readout) differs from the pretrained start.
    assert changed and all(name.startswith("mil.") for name in changed)
    assert "mil.queries" in changed and "mil.readout.fc1.weight" in changed
    assert set(done.trainable) == lora_names | {
        n for n, _ in done.model.named_parameters() if n.startswith("mil.")
    }
    # The adapters learned something (lora_B starts at zero).
    trained_b = [n for n in lora_names if "lora_B" in n and done.model.state_dict()[n].abs().sum() > 0]
    assert trained_b
    assert done.lora == LoraOptions()


def test_full_finetuning_changes_base_weights(tmp_path) -> None:
    done, *_ = _finetune(tmp_path, "full")
    base = done.base.state_dict()
    changed = [k for k, v in done.model.state_dict().items() if not torch.equal(v, base[k])]
    assert any(k.startswith("transformer.") for k in changed)
    assert any(k.startswith("gat.") for k in changed)
    assert done.lora is None and not any("lora_" in n for n in done.trainable)
    assert len(done.trainable) == len(list(done.model.parameters()))


def test_saved_adapters_rebuild_the_fine_tuned_model(lora_run, tmp_path) -> None:
    _, _, done, samples, validation, transform = lora_run
    metadata = {"genes": GENES, "transform": transform.to_dict(), "transfer": {"mode": "lora"}}
    save_trained(done.model, metadata, tmp_path, base=done.base)
    assert {p.name for p in tmp_path.iterdir()} >= {"model.json", "model.safetensors", ADAPTER_FILE}
    loaded, meta = load_trained(tmp_path)
    assert meta["format"] == LORA_FORMAT and meta["genes"] == GENES
    expected = predict_bags(done.model, validation, samples)
    np.testing.assert_array_equal(predict_bags(loaded, validation, samples), expected)
    # model.safetensors is the frozen base: load_model refuses the folder rather than return it bare.
    with pytest.raises(InputError, match="bitro-model/1"):
        load_model(tmp_path)
    # An adapter never loads onto another base.
    other = {"genes": GENES, "transform": transform.to_dict()}
    save_model(select_model_genes(_pretrained(seed=9), SOURCE_GENES, GENES), other, tmp_path / "x")
    (tmp_path / "model.safetensors").write_bytes((tmp_path / "x" / "model.safetensors").read_bytes())
    with pytest.raises(InputError, match="another base"):
        load_trained(tmp_path)


# ---------------------------------------------------------------------------------------------- leaks


def test_shared_patients_and_samples_are_refused(tmp_path) -> None:
    check_no_shared_patients({"S1": "P1", "S2": "P2"}, {"T1": "Q1"})
    with pytest.raises(PatientOverlapError, match="patient P2"):
        check_no_shared_patients({"S1": "P1", "S2": "P2"}, {"T1": "Q1", "T2": "P2"})
    with pytest.raises(PatientOverlapError, match="test samples of the target"):
        check_no_shared_patients({"S1": "P1"}, {"S1": "P1"})

    source_sheet = tmp_path / "source.tsv"
    pd.DataFrame({"sample_id": ["A", "B", "C"], "patient_id": ["TCGA-X1", "TCGA-X2", None]}).to_csv(
        source_sheet, sep="\t", index=False
    )
    assert sample_patients(["A", "C"], sheet=source_sheet) == {"A": "TCGA-X1", "C": "C"}
    target_sheet = tmp_path / "target.tsv"
    target = ["T1", "T2", "T3", "T4"]
    pd.DataFrame({"sample_id": target, "patient_id": ["Q1", "Q2", "TCGA-X2", "Q4"]}).to_csv(
        target_sheet, sep="\t", index=False
    )
    write_folds(leave_one_out("tgt", target), tmp_path / "folds.json")
    # Refused before anything is read or trained: the samples folder does not even exist.
    with pytest.raises(PatientOverlapError, match="TCGA-X2"):
        pretrain(
            tmp_path / "nowhere", tmp_path / "genes.txt", tmp_path / "out", source_sheet=source_sheet,
            target_folds_path=tmp_path / "folds.json", target_sheet=target_sheet,
        )  # fmt: skip
    assert not (tmp_path / "out").exists()
    # The fine-tuning checks again, against the patients the pretrained model records.
    pre = tmp_path / "pre"
    transform = TargetTransform.fit(np.ones((2, len(SOURCE_GENES))), SOURCE_GENES)
    record = {"source_cohort": "src", "patients": {"A": "TCGA-X1", "B": "TCGA-X2"}}
    save_model(
        _pretrained(), {"genes": SOURCE_GENES, "transform": transform.to_dict(), "pretrain": record}, pre
    )
    fold = next(f.name for f in read_folds(tmp_path / "folds.json").folds if "T3" in f.test)
    with pytest.raises(PatientOverlapError, match="TCGA-X2"):
        transfer_fold(
            tmp_path / "nowhere", tmp_path / "folds.json", fold, tmp_path / "genes.txt", pre, tmp_path / "ft",
            target_sheet=target_sheet,
        )  # fmt: skip


def test_pretraining_validates_on_a_group_and_trains_on_the_rest() -> None:
    patients = {"A": "P1", "B": "P1", "C": "P2", "D": "P3", "E": "P4"}
    fold = pretraining_fold(patients, seed=0)
    assert not fold.test and set(fold.train) | set(fold.validation) == set(patients)
    assert {patients[s] for s in fold.train}.isdisjoint({patients[s] for s in fold.validation})
    folds = leave_one_out("src", list(patients), patients=list(patients.values()))
    given = pretraining_fold(patients, folds=folds, fold_name="fold1")
    reference = folds.fold("fold1")
    assert given.validation == sorted(reference.validation)
    assert set(given.train) == set(reference.train) | set(reference.test)
    strips = spatial_strips("x", {"S": (0.0, 500.0)}, n_strips=5)
    slide = pretraining_fold({"S": "S"}, folds=strips, fold_name="fold4")
    assert slide.strips["S"]["validation"] == [[300.0, 400.0]]
    assert slide.strips["S"]["train"] == [[0.0, 300.0], [400.0, 500.0]]
    with pytest.raises(ValueError, match="at least 2 patients"):
        pretraining_fold({"A": "P1", "B": "P1"})


# -------------------------------------------------------------------------------- end to end, on disk


def _cli(verb: str, **options: object) -> int:
    """Run ``bitro <verb> --key value ...`` (``True``: a bare flag)."""
    argv = [verb]
    for key, value in options.items():
        argv += [f"--{key.replace('_', '-')}"] + ([] if value is True else [str(value)])
    return main(argv)


def test_pretrain_then_fine_tune_from_files_in_any_gene_order(tmp_path) -> None:
    source = write_cohort(
        tmp_path / "src", "st", {"S1": "P1", "S2": "P1", "S3": "P2", "S4": "P3"}, UNIVERSE[:6], UNIVERSE[:6]
    )
    target_patients = {"T1a": "Q1", "T1b": "Q1", "T2": "Q2", "T3": "Q3", "T4": "Q4", "T5": "Q5"}
    target_genes = UNIVERSE[2:]
    target = write_cohort(tmp_path / "tgt", "bulk", target_patients, target_genes, target_genes)
    # The same cohort with its genes listed, and stored, in other orders.
    shuffled = write_cohort(
        tmp_path / "tgt_shuffled",
        "bulk",
        target_patients,
        target_genes[::-1],
        ["E5", "H8", "C3", "G7", "F6", "D4"],
    )
    settings = {
        "model": TINY,
        "training": {"lr": 0.003, "max_steps": 10, "patience_steps": 50, "eval_every_steps": 1,
                     "batch_bags": 16, "phenotypes_k": 2,
                     "feature_scope": "sample", "zscore": True, "gpu": 0},
        "transfer": {"lora": {"r": 4, "alpha": 8}},
    }  # fmt: skip
    params = json.dumps(settings)
    pre = tmp_path / "transfer" / "src_to_tgt" / "pretrain"
    code = _cli(
        "transfer-pretrain",
        source_samples_dir=source / "samples",
        source_genes=source / "genes.txt",
        source_sheet=source / "sheet.tsv",
        target_folds=target / "folds.json",
        target_sheet=target / "sheet.tsv",
        params_json=params,
        quiet=True,
        out_dir=pre,
    )
    assert code == 0
    _, pmeta = load_model(pre)
    assert pmeta["genes"] == UNIVERSE[:6] and (pre / "phenotypes.npz").is_file()
    assert pmeta["pretrain"]["patients"]["S3"] == "P2" and pmeta["pretrain"]["target_cohort"] == "tgt"
    assert set(pmeta["fold"]["train"]) | set(pmeta["fold"]["validation"]) == {"S1", "S2", "S3", "S4"}

    predictions = {}
    # The full run reuses the LoRA run's folder: its resume state and adapters must not survive.
    runs = (("lora", target, "a"), ("lora_shuffled", shuffled, "b"), ("full", target, "a"))
    for name, cohort, folder in runs:
        mode = name.split("_")[0]
        out = tmp_path / "transfer" / "src_to_tgt" / folder / "fold0"
        code = _cli(
            "transfer",
            pretrain_dir=pre,
            target_samples_dir=cohort / "samples",
            target_folds=cohort / "folds.json",
            fold="fold0",
            target_genes=cohort / "genes.txt",
            target_sheet=cohort / "sheet.tsv",
            phenotypes=cohort / "fold0" / "phenotypes.npz",
            mode=mode,
            params_json=params,
            quiet=True,
            out_dir=out,
        )
        assert code == 0
        model, meta = load_trained(out)
        shared = ["C3", "D4", "E5", "F6"]
        assert meta["genes"] == shared and meta["transfer"]["shared_genes"] == shared
        assert meta["transfer"]["dropped_target_genes"] == ["G7", "H8"]
        assert meta["transfer"]["mode"] == mode and meta["transfer"]["source_cohort"] == "src"
        assert meta["transfer"]["pretrain_sha256"] == file_sha256(pre / "model.safetensors")
        assert meta["transform"]["genes"] == shared
        if mode == "lora":
            assert meta["format"] == LORA_FORMAT and (out / ADAPTER_FILE).is_file()
            assert meta["transfer"]["lora"]["r"] == 4 and meta["transfer"]["lora"]["alpha"] == 8
            assert meta["transfer"]["lora"]["dropout"] == 0.05
        else:
            assert meta["transfer"]["lora"] is None and not (out / ADAPTER_FILE).exists()
            load_model(out)  # a full transfer is an ordinary model folder
        fold = Fold(**{k: meta["fold"][k] for k in ("name", "train", "validation", "test")})
        inputs = load_fold(cohort / "samples", fold, meta["genes"], roles=("test",))
        predictions[name] = predict_bags(model, inputs.bags["test"], inputs.samples)
        # A transfer's model, LoRA adapters and all, bundled and loaded from its zip: the same model.
        bundle = export_bundle(
            out,
            tmp_path / "bundles" / name,
            basis=None,
            stain_reference=Path(__file__).resolve().parents[1] / "resources" / "stain" / "reference.json",
            embeddings_description={
                "encoder": "efficientnet_lite0",
                "weights_sha256": "a" * 64,
                "dim": 16,
                "mode": "crop",
                "crop_size": 48,
                "mpp": 0.5,
            },
            settings={},
            cohort={"name": "tgt", "level": "bulk", "format": "tcga", "source": "src"},
        )
        bundled = load_bundle(zip_path(bundle))
        assert (ADAPTER_FILE in bundled.record["files"]) == (mode == "lora")
        np.testing.assert_array_equal(
            predict_bags(bundled.model, inputs.bags["test"], inputs.samples), predictions[name]
        )
    # Genes listed and stored in another order: the very same model, bit for bit.
    np.testing.assert_array_equal(predictions["lora"], predictions["lora_shuffled"])
    assert not np.array_equal(predictions["lora"], predictions["full"])


def test_resume_state_survives_only_for_the_same_start(tmp_path) -> None:
    """The one stale-resume rule (bitro.train.state): a fine-tuning resumes only from its own start."""
    samples, train, validation, transform = _target_fold()
    inputs = FoldInputs(samples, {"train": train, "validation": validation})
    config = TrainConfig(lr=3e-3, max_steps=15, patience_steps=50, eval_every_steps=1, batch_bags=16)
    start = Start(model=_pretrained(), genes=tuple(SOURCE_GENES), lora=LoraOptions())
    model_config = replace(start.model.config, n_genes=len(GENES))

    def run(origin: dict, stop_after: int | None = None) -> list[int]:
        key = fingerprint(inputs, transform, model_config, config, "sample", origin)
        done = train_model(
            start, GENES, train, validation, samples, transform, config, tmp_path,
            run_fingerprint=key, progress=False, stop_after=stop_after,
        )  # fmt: skip
        return [row["step"] for row in done.result.history]

    origin = {"pretrain_sha256": "abc", "lora": {"target_modules": ("gat.input_proj",)}}
    first = run(origin, stop_after=5)
    assert first == [5]
    assert run(origin) == [5, 10, 15]  # tuples read back as lists: still the same start, resumed
    assert run(origin | {"pretrain_sha256": "def"}, stop_after=5) == [5]  # another start: afresh
    full = Start(model=start.model, genes=start.genes)  # other parameters: afresh, not a load error
    key = fingerprint(inputs, transform, model_config, config, "sample", origin | {"mode": "full"})
    done = train_model(full, GENES, train, validation, samples, transform, config, tmp_path,
                       run_fingerprint=key, progress=False, stop_after=5)  # fmt: skip
    assert [row["step"] for row in done.result.history] == [5]
