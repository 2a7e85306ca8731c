"""The conda env for --use-conda agrees with the pinned requirements the tests run on."""

from __future__ import annotations

import re
from pathlib import Path

import yaml

ROOT = Path(__file__).resolve().parents[1]


def pins(lines: list[str]) -> dict[str, str]:
    found = {}
    for line in lines:
        match = re.fullmatch(r"\s*([A-Za-z0-9_.\-]+)==([^\s;#]+).*", line)
        if match:
            found[match.group(1).lower().replace("_", "-")] = match.group(2)
    return found


def test_conda_env_pins_match_requirements() -> None:
    requirements = pins((ROOT / "requirements" / "cpu.txt").read_text().splitlines())
    env = yaml.safe_load((ROOT / "envs" / "bitro.yaml").read_text())
    pip_section = next(d["pip"] for d in env["dependencies"] if isinstance(d, dict) and "pip" in d)
    env_pins = pins(pip_section)
    assert env_pins, "envs/bitro.yaml pins nothing"
    mismatched = {
        name: (v, requirements.get(name)) for name, v in env_pins.items() if requirements.get(name) != v
    }
    assert not mismatched, f"envs/bitro.yaml disagrees with requirements/cpu.txt: {mismatched}"
    assert "python=3.11" in env["dependencies"]


def test_package_dependencies_are_pinned() -> None:
    """Every runtime dependency of pyproject.toml is pinned in requirements/cpu.txt and the env."""
    import tomllib

    requirements = pins((ROOT / "requirements" / "cpu.txt").read_text().splitlines())
    env = yaml.safe_load((ROOT / "envs" / "bitro.yaml").read_text())
    env_pins = pins(next(d["pip"] for d in env["dependencies"] if isinstance(d, dict) and "pip" in d))
    project = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]
    names = [re.split(r"[<>=!~\[ ]", dep)[0].lower() for dep in project["dependencies"]]
    assert [n for n in names if n not in requirements] == []
    assert [n for n in names if n not in env_pins] == []


def test_cellvit_lives_in_its_own_pinned_env() -> None:
    """CellViT++ pins numpy<2 and a CUDA torch: its own env, never the main one."""
    env = yaml.safe_load((ROOT / "envs" / "cellvit.yaml").read_text())
    pip_section = next(d["pip"] for d in env["dependencies"] if isinstance(d, dict) and "pip" in d)
    assert re.fullmatch(r"\d+\.\d+\.\d+", pins(pip_section)["cellvit"])
    conda = [d for d in env["dependencies"] if isinstance(d, str)]
    assert any(d.startswith("pytorch-cuda=") for d in conda) and "python=3.10" in conda
    main = pins((ROOT / "requirements" / "cpu.txt").read_text().splitlines())
    assert "cellvit" not in main and "torchvision" not in main
    rule = (ROOT / "workflow" / "rules" / "preprocess.smk").read_text()
    assert rule.count('"../../envs/cellvit.yaml"') == 1


def test_histomicstk_is_pinned_the_same_for_make_and_conda() -> None:
    """HistomicsTK installs with --no-deps: the Makefile from requirements/, conda by a post-deploy script."""
    wanted = pins((ROOT / "requirements" / "histomicstk.txt").read_text().splitlines())
    assert wanted["histomicstk"] == "1.4.0"
    assert {"large-image", "ctk-cli", "girder-slicer-cli-web"} <= set(wanted)
    script = (ROOT / "envs" / "bitro.post-deploy.sh").read_text()
    deployed = pins([line.rstrip(" \\") for line in script.splitlines()])
    assert deployed == wanted and "--no-deps" in script
    main = pins((ROOT / "requirements" / "cpu.txt").read_text().splitlines())
    assert not set(wanted) & set(main), "a --no-deps pin would shadow the resolved stack"
    makefile = (ROOT / "Makefile").read_text()
    assert "pip install --quiet --no-deps -r requirements/histomicstk.txt" in makefile
    assert "requirements/histomicstk.txt" in makefile.split("$(STAMP):", 1)[1].splitlines()[0]


def test_every_histomicstk_module_bitro_uses_imports() -> None:
    import importlib

    from bitro._histomicstk import HISTOMICSTK_MODULES

    for module in HISTOMICSTK_MODULES:
        importlib.import_module(module)
    import nimfa  # noqa: F401  (Xu SNMF's factorisation)
