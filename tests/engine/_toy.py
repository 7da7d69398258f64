"""Toy tasks for the engine tests: a tiny MLP on random tensors, with dropout and augmentation."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

import torch
import torch.distributed as dist
import torch.nn.functional as F
from torch import Tensor, nn
from torch.utils.data import Dataset


class ToyData(Dataset):
    """`n` samples `(x (4,), y (1,))`; `augment` adds noise drawn from the global RNG."""

    def __init__(self, n: int, *, seed: int = 0, augment: bool = True) -> None:
        g = torch.Generator().manual_seed(seed)
        self.x = torch.randn(n, 4, generator=g)
        self.y = self.x.sum(1, keepdim=True).sin() + 0.1 * torch.randn(n, 1, generator=g)
        self.augment = augment

    def __len__(self) -> int:
        return len(self.x)

    def __getitem__(self, i: int) -> tuple[Tensor, Tensor]:
        x = self.x[i]
        if self.augment:
            x = x + 0.1 * torch.randn(4)
        return x, self.y[i]


class ToyModel(nn.Module):
    def __init__(self, dropout: float = 0.2, width: int = 16) -> None:
        super().__init__()
        self.body = nn.Sequential(nn.Linear(4, width), nn.ReLU(), nn.Dropout(dropout))
        self.head = nn.Linear(width, 1)
        self.refine = nn.Linear(1, 1)  # trained in stage 1 only
        self.unused = nn.Parameter(torch.zeros(2))  # never in a loss: frozen by every stage

    def forward(self, x: Tensor, refine: bool = False) -> Tensor:
        out = self.head(self.body(x))
        return out + self.refine(out) if refine else out


class ToyMSE:
    """Streaming MSE with a sample count; `sync` all-reduces the sums."""

    def __init__(self) -> None:
        self.reset()

    def reset(self) -> None:
        self.sq = torch.zeros((), dtype=torch.float64)
        self.n = torch.zeros((), dtype=torch.float64)

    def update(self, pred: Tensor, target: Tensor) -> None:
        self.sq += ((pred.double() - target.double()) ** 2).sum().cpu()
        self.n += target.numel()

    def sync(self) -> None:
        if dist.is_available() and dist.is_initialized() and dist.get_world_size() > 1:
            both = torch.stack([self.sq, self.n])
            dist.all_reduce(both)
            self.sq, self.n = both[0].clone(), both[1].clone()

    def compute(self) -> dict[str, float]:
        return {"mse": float(self.sq / self.n.clamp(min=1)), "count": float(self.n)}


class ToyTask:
    """One stage (`"fit"`) or two (`"fit"`, `"refine"`); jitter in training_step uses the RNG."""

    def __init__(
        self,
        model: ToyModel,
        *,
        two_stages: bool = False,
        jitter: float = 0.01,
        use_unused: bool = False,
        train_unused: bool = False,
    ) -> None:
        self.model = model
        self.stages = ("fit", "refine") if two_stages else ("fit",)
        self.jitter = jitter
        self.train_unused = train_unused
        self.use_unused = use_unused

    def configure_stage(self, stage: int) -> list[dict[str, Any]]:
        m = self.model
        for p in m.parameters():
            p.requires_grad_(False)
        trained = [m.body, m.head] if stage == 0 else [m.head, m.refine]
        for module in trained:
            module.requires_grad_(True)
        groups: list[dict[str, Any]] = [
            {"params": list(trained[0].parameters()), "name": "first"},
            {"params": list(trained[1].parameters()), "lr": 0.5 * 1e-2, "name": "second"},
        ]
        if self.train_unused:
            m.unused.requires_grad_(True)
            groups.append({"params": [m.unused], "name": "unused"})
        return groups

    def collate(self, samples: Sequence[tuple[Tensor, Tensor]]) -> tuple[Tensor, Tensor]:
        return torch.stack([s[0] for s in samples]), torch.stack([s[1] for s in samples])

    def training_step(self, batch: tuple[Tensor, Tensor], stage: int) -> Mapping[str, Tensor]:
        x, y = batch
        if self.jitter:
            x = x + self.jitter * torch.randn_like(x)
        pred = self.model(x, refine=stage == 1)
        mse = F.mse_loss(pred.float(), y)
        loss = mse + (self.model.unused.sum() * 0 if self.use_unused else 0)
        return {"loss": loss, "mse": mse.detach()}

    def predict(self, batch: tuple[Tensor, Tensor]) -> list[Tensor]:
        return list(self.model(batch[0], refine=len(self.stages) == 2))

    def metrics(self) -> dict[str, ToyMSE]:
        return {"mse": ToyMSE()}

    def update_metrics(
        self, metrics: Mapping[str, Any], predictions: Sequence[Tensor], batch: Any
    ) -> None:
        metrics["mse"].update(torch.stack(list(predictions)), batch[1])

    def summarize(self, metrics: Mapping[str, Any]) -> dict[str, float]:
        return metrics["mse"].compute()


def make_task(seed: int = 0, **options: Any) -> ToyTask:
    dropout = options.pop("dropout", 0.2)
    torch.manual_seed(seed)
    return ToyTask(ToyModel(dropout), **options)


def params(task: ToyTask) -> dict[str, Tensor]:
    return {k: v.detach().clone() for k, v in task.model.state_dict().items()}
