"""The sparse24 command: --help teaches, the demo runs end to end, errors are one clear line."""

from __future__ import annotations

import subprocess
import sys

from sparse24.cli import main


def test_help_lists_commands(capsys):
    assert main([]) == 0
    out = capsys.readouterr().out
    for word in ("demo", "examples:", "--help"):
        assert word in out


def test_demo_end_to_end(tmp_path, capsys):
    rc = main(["demo", "--steps", "8", "--hidden", "64", "--out", str(tmp_path / "d")])
    out = capsys.readouterr().out
    assert rc == 0, out
    assert "14/14 sparse weights are exactly 2:4" in out and "reloaded logits identical: True" in out
    # second run into the same folder is refused with a clear one-line error
    assert main(["demo", "--steps", "1", "--hidden", "64", "--out", str(tmp_path / "d")]) == 2
    assert "already exists" in capsys.readouterr().err


def test_module_entry_point():
    r = subprocess.run([sys.executable, "-m", "sparse24", "--version"], capture_output=True, text=True, timeout=120)
    assert r.returncode == 0 and r.stdout.startswith("sparse24 ")


def test_top_level_help_imports_no_command_module():
    """`sparse24 --help` lists every command without importing any command's module (or torch-heavy methods)."""
    probe = ("import sys, contextlib, io; from sparse24.cli import main, COMMANDS\n"
             "with contextlib.redirect_stdout(io.StringIO()) as f:\n"
             "    try: main(['--help'])\n"
             "    except SystemExit: pass\n"
             "print(all(n in f.getvalue() for n in COMMANDS))\n"
             "print(sorted(m for m in sys.modules if m.startswith(('sparse24.prune', 'sparse24.eval', "
             "'sparse24.train', 'sparse24.kernels', 'sparse24.demo'))))")
    r = subprocess.run([sys.executable, "-c", probe], capture_output=True, text=True, timeout=120)
    assert r.returncode == 0, r.stderr
    listed, imported = r.stdout.splitlines()
    assert listed == "True" and imported == "[]"


def test_subcommand_help_imports_only_its_module():
    probe = ("import sys, contextlib, io; from sparse24.cli import main\n"
             "with contextlib.redirect_stdout(io.StringIO()) as f:\n"
             "    try: main(['demo', '--help'])\n"
             "    except SystemExit: pass\n"
             "print('--steps' in f.getvalue(), 'sparse24.prune.cli' in sys.modules)")
    r = subprocess.run([sys.executable, "-c", probe], capture_output=True, text=True, timeout=120)
    assert r.returncode == 0, r.stderr
    assert r.stdout.split() == ["True", "False"]
