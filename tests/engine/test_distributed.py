"""Two gloo processes (DDP) against one process: same step, same metrics, rank-0-only I/O."""

from __future__ import annotations

import socket
import sys
from pathlib import Path
from typing import Any

import pytest
import torch
import torch.multiprocessing as tmp_mp

from samkit.engine import Trainer, distributed, evaluate, latest_checkpoint, load_checkpoint
from tests.engine import _ddp_worker
from tests.engine._toy import ToyData, make_task, params

pytestmark = pytest.mark.skipif(
    sys.platform == "win32" or not torch.distributed.is_available(), reason="needs gloo"
)


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


@pytest.fixture(scope="module")
def ddp(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, list[dict[str, Any]]]:
    root = tmp_path_factory.mktemp("ddp")
    tmp_mp.spawn(_ddp_worker.run, args=(str(root), _free_port()), nprocs=2, join=True)
    ranks = torch.load(root / "results.pt", weights_only=True)["ranks"]
    return root, ranks


def _single(tmp_path: Path, **kw: Any) -> dict[str, torch.Tensor]:
    task = make_task(0, dropout=0.0, jitter=0.0)
    Trainer(task, ToyData(10), _ddp_worker.ddp_config(**kw), tmp_path).fit()
    return params(task)


def test_helpers_answer_for_one_process_without_torchrun() -> None:
    assert not distributed.init_distributed()
    assert (distributed.rank(), distributed.world_size(), distributed.is_main_process()) == (
        0,
        1,
        True,
    )


def test_two_processes_with_batch_b_equal_one_with_batch_2b(ddp: Any, tmp_path: Path) -> None:
    root, ranks = ddp
    reference = _single(tmp_path / "one", batch_size=4)
    for rank in ranks:
        for key in ("a", "b"):  # b: batch 1 x accumulate 2 per rank (no_sync path)
            for name, value in reference.items():
                torch.testing.assert_close(rank[key][name], value, atol=1e-6, rtol=0)
    # gradients, not only AdamW's sign-like first step: the first moments agree too
    mine = load_checkpoint(latest_checkpoint(tmp_path / "one"))["optimizer"]["state"]
    theirs = load_checkpoint(latest_checkpoint(root / "run" / "a"))["optimizer"]["state"]
    for s in mine:
        torch.testing.assert_close(theirs[s]["exp_avg"], mine[s]["exp_avg"], atol=1e-7, rtol=1e-5)


def test_evaluation_on_two_processes_gives_the_metrics_of_one(ddp: Any) -> None:
    _, ranks = ddp
    task = make_task(0, dropout=0.0, jitter=0.0)
    task.model.load_state_dict(ranks[0]["b"])
    one = evaluate(task, ToyData(7, seed=9, augment=False), batch_size=2, progress=False)
    assert one["count"] == 7
    for rank in ranks:
        assert rank["eval"]["count"] == 7  # no sample counted twice
        assert rank["eval"]["mse"] == pytest.approx(one["mse"], rel=1e-6)  # float32 batching
        assert rank["metrics"]["count"] == 7
    assert ranks[0]["metrics"] == ranks[1]["metrics"]


def test_only_rank_zero_writes(ddp: Any) -> None:
    root, _ = ddp
    assert not (root / "rank1").exists()
    assert [p.name for p in (root / "run" / "a" / "checkpoints").iterdir()] != []
    assert (root / "run" / "a" / "log.jsonl").read_text().count('"kind": "train"') == 2
    assert load_checkpoint(latest_checkpoint(root / "run" / "a"))["world_size"] == 2


def test_parameter_without_gradient_fails_clearly_on_every_rank(ddp: Any) -> None:
    _, ranks = ddp
    for rank in ranks:
        assert "got no gradient from training_step: unused" in rank["unused"]


def test_refusal_and_resume_are_decided_for_every_rank(ddp: Any) -> None:
    _, ranks = ddp
    for rank in ranks:
        assert "already holds checkpoints" in rank["exists"]
        for name, value in rank["e"].items():  # resumed at step 2 of 3, dropout on
            assert torch.equal(rank["f"][name], value), name
    assert not torch.equal(ranks[0]["e"]["head.weight"], ranks[0]["a"]["head.weight"])
