"""Release hygiene: the licence, the changelog, the citation metadata and `an8flower cite` agree
with the package's version."""

from __future__ import annotations

import re
import sys
from pathlib import Path

import an8flower
from an8flower.cite import RELEASE_YEAR, REPOSITORY, dataset_bibtex

if sys.version_info >= (3, 11):
    import tomllib
else:  # pragma: no cover
    import tomli as tomllib

REPO = Path(__file__).resolve().parents[1]


def _cff(field: str) -> str:
    match = re.search(
        rf"^{field}: \"?([^\"\n]+)\"?$", (REPO / "CITATION.cff").read_text(encoding="utf-8"), re.M
    )
    assert match, field
    return match.group(1)


def test_the_licence_is_mit_and_declared_as_spdx() -> None:
    licence = (REPO / "LICENSE").read_text(encoding="utf-8")
    assert licence.startswith("MIT License\n\nCopyright (c) 2026 an8flower developers\n")
    project = tomllib.loads((REPO / "pyproject.toml").read_text(encoding="utf-8"))["project"]
    assert project["license"] == "MIT" and project["license-files"] == ["LICENSE"]
    assert _cff("license") == "MIT"


def test_one_version_everywhere() -> None:
    project = tomllib.loads((REPO / "pyproject.toml").read_text(encoding="utf-8"))["project"]
    assert project["version"] == an8flower.__version__ == _cff("version")
    changelog = (REPO / "CHANGELOG.md").read_text(encoding="utf-8")
    assert "## [Unreleased]" in changelog and f"## [{an8flower.__version__}] - " in changelog


def test_the_software_entry_has_version_year_and_url() -> None:
    entry = dataset_bibtex()
    assert f"version = {{{an8flower.__version__}}}" in entry
    assert f"year    = {{{RELEASE_YEAR}}}" in entry and f"url     = {{{REPOSITORY}}}" in entry
    assert _cff("date-released").startswith(f"{RELEASE_YEAR}-")
    assert _cff("repository-code") == REPOSITORY
