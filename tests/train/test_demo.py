"""``sparse24 demo`` checks its output folder before it trains."""

from __future__ import annotations

import pytest

from sparse24.cli import main


def test_demo_refuses_existing_out_before_training(tmp_path, capsys, monkeypatch):
    from sparse24.train.loop import Trainer

    out = tmp_path / "demo"
    out.mkdir()
    (out / "keep.txt").write_text("mine")

    def no_training(self):
        raise AssertionError("trained before checking --out")

    monkeypatch.setattr(Trainer, "train_step", no_training)
    assert main(["demo", "--steps", "500", "--out", str(out)]) == 2
    assert "already exists" in capsys.readouterr().err and (out / "keep.txt").read_text() == "mine"
    assert main(["demo", "--steps", "0", "--out", str(tmp_path / "new")]) == 2
    assert "--steps must be >= 1" in capsys.readouterr().err


@pytest.mark.parametrize("method", ["sste"])
def test_demo_trains_through_the_shared_trainer(tmp_path, capsys, monkeypatch, method):
    from sparse24.train.loop import Trainer

    steps = []
    real = Trainer.train_step

    def counted(self):
        steps.append(self.step)
        return real(self)

    monkeypatch.setattr(Trainer, "train_step", counted)
    assert main(["demo", "--method", method, "--steps", "3", "--hidden", "64", "--out", str(tmp_path / "d")]) == 0
    out = capsys.readouterr().out
    assert steps == [0, 1, 2] and "reloaded logits identical: True" in out and "step    1  loss" in out
