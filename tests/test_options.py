"""Every choice list is stated once (bitro.options, or the model module that implements it): the command
line offers exactly those choices, the config schema's enums equal them, and ``auto`` resolves in one place.
"""

from __future__ import annotations

import argparse
from pathlib import Path
from typing import get_args

import pytest
import yaml

from bitro import options
from bitro.cli import build_parser
from bitro.errors import TileSettingsError, UsageError
from bitro.model import context, mil

ROOT = Path(__file__).resolve().parents[1]


def schema() -> dict:
    return yaml.safe_load((ROOT / "workflow" / "schemas" / "config.schema.yaml").read_text())


def enum(document: dict, *keys: str) -> tuple[str, ...]:
    """The enum at ``properties.<key>.properties.<key>…`` (``$defs.<name>`` for a first key ``$defs``)."""
    node = document["$defs"][keys[1]] if keys[0] == "$defs" else document["properties"][keys[0]]
    for key in keys[2:] if keys[0] == "$defs" else keys[1:]:
        node = node["properties"] if "properties" in node else node["additionalProperties"]["properties"]
        node = node[key]
    return tuple(node["enum"])


def test_the_config_schema_offers_exactly_the_library_choices() -> None:
    document = schema()
    assert enum(document, "stain", "method") == options.STAIN_METHODS
    assert enum(document, "segmentation", "backend") == options.SEGMENTATION_BACKENDS
    assert enum(document, "$defs", "segmentation_override", "backend") == options.SEGMENTATION_BACKENDS
    assert enum(document, "features", "encoder") == options.ENCODERS
    assert enum(document, "features", "mode") == options.EMBED_MODES
    assert enum(document, "features", "pooling") == options.DINOV3_POOLINGS
    assert enum(document, "cohorts", "level") == options.LEVELS
    assert enum(document, "cohorts", "format") == options.FORMATS
    assert enum(document, "cohorts", "group_by") == options.GROUP_BY
    assert enum(document, "evaluation", "st_group_by") == options.GROUP_BY
    assert enum(document, "training", "feature_scope") == options.FEATURE_SCOPES
    assert enum(document, "transfer", "mode") == options.TRANSFER_MODES
    assert enum(document, "demo", "preset") == options.DEMO_PRESETS
    assert enum(document, "model", "readout") == get_args(mil.ReadoutKind)
    assert enum(document, "model", "pooling") == get_args(mil.Pooling)
    assert enum(document, "model", "slide_context") == get_args(context.SlideContext)
    assert set(options.FITTED_STAIN_METHODS) == set(options.STAIN_METHODS) - {"none"}
    assert document["properties"]["stain"]["properties"]["method"]["default"] == options.DEFAULT_STAIN_METHOD
    config = yaml.safe_load((ROOT / "config" / "config.yaml").read_text())
    assert config["stain"]["method"] == options.DEFAULT_STAIN_METHOD


def choices(parser: argparse.ArgumentParser, verb: str, flag: str) -> tuple[str, ...]:
    sub = next(a for a in parser._actions if isinstance(a, argparse._SubParsersAction)).choices[verb]
    return tuple(next(a for a in sub._actions if flag in a.option_strings).choices)


def test_the_command_line_offers_exactly_the_library_choices() -> None:
    parser = build_parser()
    assert choices(parser, "stain", "--method") == options.STAIN_METHODS
    assert choices(parser, "prepare", "--method") == options.STAIN_METHODS
    assert parser.parse_args(["stain", "--format", "hest", "--root", ".", "--sample", "S", "--reference", "r",
                              "--out", "o"]).method == options.DEFAULT_STAIN_METHOD  # fmt: skip
    assert choices(parser, "cells", "--backend") == options.SEGMENTATION_BACKENDS
    assert choices(parser, "embed", "--encoder") == options.ENCODERS
    assert choices(parser, "embed", "--mode") == options.EMBED_MODES
    assert choices(parser, "embed", "--pooling") == options.DINOV3_POOLINGS
    for verb in ("tissue", "units", "stain", "prepare", "cells", "crops", "targets", "embed", "doctor"):
        assert choices(parser, verb, "--format") == options.FORMATS, verb
    assert choices(parser, "demo", "--preset") == options.DEMO_PRESETS
    assert choices(parser, "genes", "--level") == options.LEVELS
    assert choices(parser, "folds", "--group-by") == options.GROUP_BY


def test_auto_mode_takes_tile_tokens_only_for_the_vit() -> None:
    assert set(options.AUTO_EMBED_MODE) == set(options.ENCODERS)
    assert options.resolve_embed_mode("auto", "dinov3_vitl16") == "tile-token"
    assert options.resolve_embed_mode("auto", "efficientnet_lite0") == "crop"
    for encoder in options.NUCLEAR_FEATURE_ENCODERS:
        assert options.resolve_embed_mode("auto", encoder) == "crop"
        with pytest.raises(TileSettingsError, match=r"features\.mode tile-token: the morphology encoders"):
            options.resolve_embed_mode("tile-token", encoder, setting="features.mode")
    assert options.resolve_embed_mode("crop", "dinov3_vitl16") == "crop"
    assert options.resolve_embed_mode("tile-token", "efficientnet_lite0") == "tile-token"
    with pytest.raises(UsageError, match="unknown embedding mode"):
        options.resolve_embed_mode("tiles", "dinov3_vitl16")
    with pytest.raises(UsageError, match="unknown encoder"):
        options.resolve_embed_mode("auto", "resnet50")
