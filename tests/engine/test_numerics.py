"""Denormal flushing is scoped: on inside the block or `fit`, the previous mode restored after."""

from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path

import pytest
import torch
from torch import Tensor

from samkit.engine import TrainConfig, Trainer
from samkit.engine.numerics import denormals_flushed, flush_denormal_enabled
from tests.engine._toy import ToyData, ToyTask, make_task

if not torch.set_flush_denormal(False):  # also leaves the mode off for every test below
    pytest.skip("this CPU has no flush-to-zero mode", allow_module_level=True)

DENORMAL = 1e-40  # below float32's smallest normal number, 1.2e-38


def _denormal_survives() -> bool:
    return bool(torch.tensor([DENORMAL]).mul(1.0).item() != 0.0)


def test_block_flushes_and_restores_even_after_an_error() -> None:
    assert not flush_denormal_enabled() and _denormal_survives()
    with denormals_flushed():
        assert flush_denormal_enabled() and not _denormal_survives()
    assert not flush_denormal_enabled() and _denormal_survives()
    with pytest.raises(RuntimeError, match="boom"), denormals_flushed():
        raise RuntimeError("boom")
    assert not flush_denormal_enabled()
    with denormals_flushed(enabled=False):
        assert not flush_denormal_enabled()


def test_a_mode_that_was_on_stays_on() -> None:
    torch.set_flush_denormal(True)
    try:
        with denormals_flushed():
            pass
        assert flush_denormal_enabled()
        with denormals_flushed(enabled=False):  # a no-op: does not switch it off either
            assert flush_denormal_enabled()
    finally:
        torch.set_flush_denormal(False)


class _Recording(ToyTask):
    """The toy task, noting the mode each training step runs in."""

    seen: list[bool]

    def training_step(self, batch: tuple[Tensor, Tensor], stage: int) -> Mapping[str, Tensor]:
        self.seen.append(flush_denormal_enabled())
        return super().training_step(batch, stage)


@pytest.mark.parametrize("flush", [False, True])
def test_fit_runs_in_the_configured_mode_and_leaves_the_process_as_it_was(
    tmp_path: Path, flush: bool
) -> None:
    toy = make_task(0)
    task = _Recording(toy.model)
    task.seen = []
    config = TrainConfig(
        steps=3, batch_size=2, checkpoint_every=3, progress=False, flush_denormal=flush
    )
    Trainer(task, ToyData(8), config, tmp_path).fit()
    assert task.seen == [flush] * 3
    assert not flush_denormal_enabled()
