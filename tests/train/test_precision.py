"""Mixed precision: on CUDA the default is bf16 autocast (fp32 master weights, the 2:4 GEMMs on the 16-bit sparse
kernels); on the CPU none, and asking for it is refused with the fix, before any work."""

from __future__ import annotations

import pytest
from sparse24.train.distributed import make_accelerator, resolve_precision

from sparse24.cli import main


@pytest.mark.parametrize("precision,cpu,want", [("auto", False, "bf16"), ("auto", True, "no"), ("fp16", False, "fp16"),
                                                ("no", False, "no"), ("no", True, "no")])
def test_precision_resolution(precision, cpu, want):
    assert resolve_precision(precision, cpu) == want


def test_cpu_refuses_autocast_and_unknown_values():
    for p in ("bf16", "fp16"):
        with pytest.raises(ValueError, match="--precision no"):
            resolve_precision(p, cpu=True)
    with pytest.raises(ValueError, match="choose one of"):
        resolve_precision("fp8", cpu=False)


def test_accelerator_carries_the_precision():
    assert make_accelerator("auto", cpu=True).mixed_precision == "no"


def test_train_cli_refuses_bf16_on_cpu_before_work(tmp_path, capsys):
    rc = main(["train", "--recipe", "sste", "--steps", "1", "--precision", "bf16", "--data", "shipped",
               "--tokenizer", "byte", "--out", str(tmp_path / "r"), "--no-progress"])
    assert rc == 2 and "--precision no" in capsys.readouterr().err
    assert not (tmp_path / "r" / "metrics.jsonl").exists()
