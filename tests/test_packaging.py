"""The distribution's metadata: one version, the license it claims, where to find it."""

from __future__ import annotations

import tomllib
from importlib import metadata
from pathlib import Path

import kernia_billing

ROOT = Path(__file__).resolve().parents[1]


def test_one_source_for_the_version():
    project = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]
    assert "version" not in project and "version" in project["dynamic"]
    assert metadata.version("kernia-billing") == kernia_billing.__version__


def test_the_mit_license_ships_and_the_urls_are_declared():
    project = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]
    assert project["license"] == "MIT"
    assert (ROOT / "LICENSE").read_text().startswith("MIT License")
    assert "LICENSE" in project["license-files"]
    assert {"Homepage", "Repository", "Changelog", "Issues"} <= set(project["urls"])
