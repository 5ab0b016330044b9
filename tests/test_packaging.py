"""`pip install .` and `pip install -e .` both expose sparse24.kernels/.train/.prune/.eval from the repo folders."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
SUBPACKAGES = ("kernels", "train", "prune", "eval")
PROBE = (
    "import importlib, json, sys; sys.path[:0] = sys.argv[1:]; import site; [site.addsitedir(p) for p in sys.argv[1:]];"
    f"mods = ['sparse24'] + ['sparse24.' + s for s in {SUBPACKAGES!r}];"
    "print(json.dumps({m: importlib.import_module(m).__file__ for m in mods}))"
)


def _pip(*args: str) -> None:
    r = subprocess.run([sys.executable, "-m", "pip", "install", "-q", "--no-deps", "--no-build-isolation", *args],
                       capture_output=True, text=True, timeout=600)
    if r.returncode:
        pytest.fail(f"pip install failed:\n{r.stdout}\n{r.stderr}")


def _probe(site_dir: Path, cwd: Path) -> dict:
    import json

    env = {"PATH": "", "PYTHONPATH": ":".join(p for p in sys.path if "site-packages" in p)}
    r = subprocess.run([sys.executable, "-S", "-c", PROBE, str(site_dir)], capture_output=True, text=True, cwd=cwd,
                       timeout=300, env=env)
    assert r.returncode == 0, r.stderr
    return json.loads(r.stdout)


def test_regular_install_contains_subpackages(tmp_path):
    target = tmp_path / "site"
    _pip("--target", str(target), str(ROOT))
    files = _probe(target, tmp_path)
    for sub in SUBPACKAGES:
        assert Path(files[f"sparse24.{sub}"]).is_relative_to(target / "sparse24" / sub), files
    assert (target / "sparse24" / "data" / "tiny_corpus.txt").is_file()


def test_editable_install_maps_to_repo_folders(tmp_path):
    prefix = tmp_path / "prefix"
    _pip("--ignore-installed", "--prefix", str(prefix), "-e", str(ROOT))  # never touch the running env's install
    site_dir = next(prefix.glob("lib/python*/site-packages"))
    files = _probe(site_dir, tmp_path)
    for sub in SUBPACKAGES:
        assert Path(files[f"sparse24.{sub}"]).resolve() == (ROOT / sub / "__init__.py").resolve(), files
