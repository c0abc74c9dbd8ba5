"""What a new machine installs: pins the public index can serve, one version, the README's commands = CI's."""

from __future__ import annotations

import re
from importlib.metadata import version
from pathlib import Path

import pipeline

ROOT = Path(__file__).resolve().parents[1]


def _pins() -> dict[str, str]:
    lines = (ROOT / "constraints.txt").read_text().splitlines()
    pins = [ln.split("#", 1)[0].strip() for ln in lines]
    return dict(p.split("==", 1) for p in pins if p)


def test_no_constraint_pins_a_local_build():
    """`torch==2.13.0+cpu` exists only on a local wheel or PyTorch's own index: pip against the
    public index cannot resolve it. `==2.13.0` still accepts an installed +cpu build."""
    pins = _pins()
    assert "torch" in pins
    assert not [f"{k}=={v}" for k, v in pins.items() if "+" in v or not re.fullmatch(r"[\w.!]+", v)]


def test_the_version_is_written_once():
    import tomllib

    project = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]
    assert "version" not in project and "version" in project["dynamic"]
    assert version("bert-pipeline") == pipeline.__version__


def test_readme_commands_are_what_ci_runs():
    readme = (ROOT / "README.md").read_text()
    ci = (ROOT / ".ci" / "run").read_text()
    first = next(ln for ln in readme.splitlines() if ln.startswith("python3 -m venv"))
    assert "pip install torch==2.13.0 && pip install -c constraints.txt -e '.[demo,dev]'" in first
    assert "pip install -q torch==2.13.0" in ci and "-c constraints.txt -e '.[dev,demo]'" in ci
    assert "python -m pytest -q" in readme and "python -m pytest -q --durations=15" in ci
