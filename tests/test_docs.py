"""The shipped docs stand alone: no pointer outside the project, no broken relative link."""

from __future__ import annotations

import re
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
SHIPPED = [
    ROOT / "README.md",
    ROOT / "pyproject.toml",
    ROOT / "Cargo.toml",
    *sorted((ROOT / "docs").rglob("*.md")),
    *sorted((ROOT / "python").rglob("*.py")),
    *sorted((ROOT / "python").rglob("*.pyi")),
    *sorted((ROOT / "rust").rglob("*.rs")),
    *sorted((ROOT / "examples").rglob("*.py")),
]
MARKDOWN = [path for path in SHIPPED if path.suffix == ".md"]
LINK = re.compile(r"\]\(([^)#\s]+)(?:#[^)]*)?\)")


@pytest.mark.parametrize("path", SHIPPED, ids=lambda p: str(p.relative_to(ROOT)))
def test_nothing_shipped_points_at_the_team_folder(path):
    # Users get the package, its README and docs/; the team's shared folder is not theirs.
    assert "shared/" not in path.read_text(encoding="utf-8")


@pytest.mark.parametrize("path", MARKDOWN, ids=lambda p: str(p.relative_to(ROOT)))
def test_relative_links_resolve(path):
    for target in LINK.findall(path.read_text(encoding="utf-8")):
        if "://" in target:
            continue
        assert (path.parent / target).exists(), f"{path.name} links to missing {target}"


def test_the_contract_and_the_recipe_are_in_the_docs():
    assert (ROOT / "docs" / "loss.md").is_file() and (ROOT / "docs" / "protocol.md").is_file()
    readme = (ROOT / "README.md").read_text(encoding="utf-8")
    assert "docs/loss.md" in readme and "docs/protocol.md" in readme


def test_the_readme_shows_no_pictures_a_package_index_could_not_display():
    # The README is the package's long description: relative image paths break there.
    readme = (ROOT / "README.md").read_text(encoding="utf-8")
    assert "![" not in readme and "<img" not in readme
    assert "docs/results.md" in readme


def test_the_package_ships_a_license_and_a_changelog():
    assert "MIT License" in (ROOT / "LICENSE").read_text(encoding="utf-8")
    changelog = (ROOT / "CHANGELOG.md").read_text(encoding="utf-8")
    assert "## Unreleased" in changelog and "## 0.1.0" in changelog
    for cargo in (ROOT / "Cargo.toml", *sorted((ROOT / "rust").glob("*/Cargo.toml"))):
        assert "example.invalid" not in cargo.read_text(encoding="utf-8"), cargo


def test_the_sdist_carries_every_file_the_readme_links_to():
    # The wheel holds the package only; the README's links and `python examples/...` commands
    # must at least resolve in the source distribution (maturin's `include` with format sdist).
    tomllib = pytest.importorskip("tomllib")
    maturin = tomllib.loads((ROOT / "pyproject.toml").read_text(encoding="utf-8"))["tool"]["maturin"]
    included = {
        path
        for rule in maturin.get("include", [])
        if rule.get("format") == "sdist"
        for path in ROOT.glob(rule["path"])
    }
    readme = (ROOT / "README.md").read_text(encoding="utf-8")
    wanted = [t for t in LINK.findall(readme) if "://" not in t]
    wanted += re.findall(r"python (examples/\S+\.py)", readme)
    assert wanted
    for target in wanted:
        assert ROOT / target in included, f"README names {target}, which the sdist lacks"
