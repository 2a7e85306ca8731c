"""LoRA with peft: explicit targets, frozen base, trainable head, adapters active in eval."""

from __future__ import annotations

import copy
from pathlib import Path

import numpy as np
import pytest
import torch
from torch import nn

from bitro.errors import WeightsError
from bitro.model import Bag, BiTro, BiTroConfig, CellBatch, bitro_loss
from bitro.model.lora import (
    apply_lora,
    load_lora,
    lora_target_modules,
    read_lora_metadata,
    save_lora,
    trainable_parameter_names,
)

F_IN = 12


def make_batch(seed: int = 0) -> CellBatch:
    rng = np.random.default_rng(seed)
    bags = []
    for sizes in ([6, 4], [3], [8]):
        n = sum(sizes)
        edges = [np.stack([np.arange(s), np.roll(np.arange(s), 1)]) for s in sizes]
        bags.append(
            Bag(
                rng.normal(size=(n, F_IN)),
                rng.uniform(-30, 30, (n, 2)),
                rng.integers(0, 3, n),
                np.array(sizes),
                edges,
            )
        )
    return CellBatch.collate(bags)


def make_model(seed: int = 0) -> BiTro:
    torch.manual_seed(seed)
    return BiTro(BiTroConfig(n_genes=5, in_dim=F_IN, dim=16, position_dim=4, ff_mult=2, dropout=0.0))


def test_targets_are_explicit_linears() -> None:
    model = make_model()
    targets = lora_target_modules(model)
    assert targets == [
        "gat.input_proj",
        "gat.layers.0.proj",
        "gat.layers.1.proj",
        "transformer.fuse",
        *[
            f"transformer.blocks.{b}.{m}"
            for b in (0, 1)
            for m in ("attn.q", "attn.k", "attn.v", "attn.out", "ff1", "ff2")
        ],
    ]
    modules = dict(model.named_modules())
    assert all(isinstance(modules[t], nn.Linear) for t in targets)
    with pytest.raises(ValueError, match="pattern"):
        apply_lora(model, target_modules="all-linear")  # type: ignore[arg-type]
    with pytest.raises(ValueError, match=r"not an nn\.Linear"):
        apply_lora(model, target_modules=["transformer.norm"])


def test_lora_trains_adapters_and_head_only() -> None:
    model = make_model()
    batch = make_batch()
    base = {name: p.detach().clone() for name, p in model.named_parameters() if not name.startswith("mil.")}
    head = {name: p.detach().clone() for name, p in model.named_parameters() if name.startswith("mil.")}
    trainable = apply_lora(model, r=4, alpha=8, dropout=0.05)
    assert trainable == trainable_parameter_names(model)
    assert {n for n in trainable if "lora_" not in n} == set(head)
    assert len([n for n in trainable if "lora_A" in n]) == len(lora_target_modules(make_model()))
    with pytest.raises(ValueError, match="already"):
        apply_lora(model)
    adapters = {n: p.detach().clone() for n, p in model.named_parameters() if "lora_" in n}
    optimiser = torch.optim.Adam(model.parameters(), lr=1e-2)  # all parameters: frozen ones get no grad
    target = torch.randn(3, 5)
    model.train()
    for _ in range(3):
        optimiser.zero_grad()
        bitro_loss(model(batch), target, batch).total.backward()
        optimiser.step()
    params = dict(model.named_parameters())
    for name, before in base.items():
        peft_name = (
            name
            if name in params
            else name.replace(".weight", ".base_layer.weight").replace(".bias", ".base_layer.bias")
        )
        assert torch.equal(params[peft_name], before), name
        assert params[peft_name].grad is None, name
    for name, before in adapters.items():
        assert not torch.equal(params[name], before), name
    for name, before in head.items():
        assert not torch.equal(params[name], before), name


def test_adapters_change_eval_output_and_zero_adapters_do_not() -> None:
    model = make_model()
    batch = make_batch(1)
    reference = copy.deepcopy(model).eval()
    apply_lora(model)
    model.eval()
    with torch.no_grad():
        torch.testing.assert_close(model(batch).prediction, reference(batch).prediction)  # B = 0 at init
        for name, p in model.named_parameters():
            if "lora_B" in name:
                p.normal_(0, 0.5)
        changed = model(batch).prediction
    assert (changed - reference(batch).prediction).abs().max() > 1e-3


def test_save_and_load_adapters(tmp_path: Path) -> None:
    batch = make_batch(2)
    model = make_model()
    base_state = copy.deepcopy(model.state_dict())
    apply_lora(model, r=4, alpha=8)
    with torch.no_grad():
        for p in model.parameters():
            if p.requires_grad:
                p.add_(torch.randn_like(p) * 0.1)
        # Fine-tuning also moves pooled_norm's running moments (buffers of the head): a forward pass in
        # training mode does. The defect: the adapter file kept the head's parameters only, so the
        # rebuilt model read out with the base model's moments.
        assert model.config.pooled_norm
        model.train()
        model(batch)
    assert not torch.equal(model.mil.running_mean, base_state["mil.running_mean"])
    model.eval()
    path = tmp_path / "adapter.safetensors"
    save_lora(model, path, metadata={"genes": '["A", "B", "C", "D", "E"]'})
    meta = read_lora_metadata(path)
    assert meta["genes"].startswith('["A"')
    fresh = make_model(seed=99)
    fresh.load_state_dict(base_state)
    names = load_lora(fresh, path)
    assert names == trainable_parameter_names(model)
    fresh.eval()
    with torch.no_grad():
        torch.testing.assert_close(fresh(batch).prediction, model(batch).prediction, atol=0, rtol=0)
    other = make_model()
    apply_lora(other, r=2)
    with pytest.raises(WeightsError, match="differ"):
        load_lora(other, path)
    with pytest.raises(ValueError, match="no LoRA"):
        save_lora(make_model(), tmp_path / "x.safetensors")
