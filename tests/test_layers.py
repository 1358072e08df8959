"""Layers point one way: web -> folders -> (storage, audit) -> config (STYLE.md rule 1)."""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
PACKAGES = ("config", "storage", "audit", "folders", "web")
# What each package may import from the project, and which third-party packages are
# reserved for one layer.
ALLOWED = {
    "config": set(),
    "storage": {"config"},
    "audit": {"config", "storage"},
    "folders": {"config", "storage", "audit"},
    "web": {"config", "storage", "audit", "folders"},
}
RESERVED = {
    "flask": {"web"},
    "werkzeug": {"web"},
    "boto3": {"storage"},
    "botocore": {"storage"},
    "magic": {"storage"},
    "pypdf": {"storage"},
    # audit signs checkpoints with Ed25519; everything else crypto lives in storage.
    "cryptography": {"storage", "audit"},
    "sqlalchemy": {"folders", "audit"},
    "alembic": {"folders"},
}


def imports_of(path: Path) -> set[str]:
    tree = ast.parse(path.read_text(), filename=str(path))
    names: set[str] = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            names.update(alias.name.split(".")[0] for alias in node.names)
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            names.add(node.module.split(".")[0])
    return names


@pytest.mark.parametrize("package", PACKAGES)
def test_package_imports_point_one_way(package: str) -> None:
    problems = []
    for path in sorted((ROOT / package).rglob("*.py")):
        for name in imports_of(path):
            if name in PACKAGES and name != package and name not in ALLOWED[package]:
                problems.append(f"{path.relative_to(ROOT)} imports {name}")
            if name in RESERVED and package not in RESERVED[name]:
                problems.append(f"{path.relative_to(ROOT)} imports {name} (reserved)")
    assert problems == []


def test_the_scan_sees_real_violations(tmp_path: Path) -> None:
    bad = tmp_path / "bad.py"
    bad.write_text("import flask\nfrom web.app import create_app\nfrom . import sibling\n")
    assert imports_of(bad) == {"flask", "web"}
