"""Every choice list is stated once (bitro.options): the CLI and the config schema agree with it."""

from __future__ import annotations

import argparse
from pathlib import Path

import yaml

from bitro import options
from bitro.cli import build_parser

ROOT = Path(__file__).resolve().parents[1]


def schema() -> dict:
    return yaml.safe_load((ROOT / "workflow" / "schemas" / "config.schema.yaml").read_text())


def test_the_config_schema_offers_exactly_the_library_choices() -> None:
    document = schema()
    props, defs = document["properties"], document["$defs"]
    assert props["stain"]["properties"]["method"]["enum"] == list(options.STAIN_METHODS)
    assert props["segmentation"]["properties"]["backend"]["enum"] == list(options.SEGMENTATION_BACKENDS)
    assert defs["segmentation_override"]["properties"]["backend"]["enum"] == list(
        options.SEGMENTATION_BACKENDS
    )
    assert props["features"]["properties"]["encoder"]["enum"] == list(options.ENCODERS)
    assert set(options.FITTED_STAIN_METHODS) == set(options.STAIN_METHODS) - {"none"}
    assert props["stain"]["properties"]["method"]["default"] == options.DEFAULT_STAIN_METHOD
    config = yaml.safe_load((ROOT / "config" / "config.yaml").read_text())
    assert config["stain"]["method"] == options.DEFAULT_STAIN_METHOD


def choices(parser: argparse.ArgumentParser, verb: str, flag: str) -> tuple[str, ...]:
    sub = next(a for a in parser._actions if isinstance(a, argparse._SubParsersAction)).choices[verb]
    return tuple(next(a for a in sub._actions if flag in a.option_strings).choices)


def test_the_command_line_offers_exactly_the_library_choices() -> None:
    parser = build_parser()
    assert choices(parser, "stain", "--method") == options.STAIN_METHODS
    assert parser.parse_args(["stain", "--format", "hest", "--root", ".", "--sample", "S", "--reference", "r",
                              "--out", "o"]).method == options.DEFAULT_STAIN_METHOD  # fmt: skip
    assert choices(parser, "cells", "--backend") == options.SEGMENTATION_BACKENDS
    assert choices(parser, "embed", "--encoder") == options.ENCODERS
