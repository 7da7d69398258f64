"""What the commands share: system names, the run folder and its `run.json`, small parsers.

A run folder (`samkit train --out RUN`) holds:

- `run.json`: the system, the data files, the task options, the vocabulary and the training
  configuration (written by rank 0, atomically, when training starts and when it ends);
- `model/`: the trained system (`save_pretrained`), written when training ends;
- `checkpoints/`, `log.jsonl`: the engine's checkpoints and log;
- `metrics.json`: the last evaluation (`samkit train` with `--val`, or `samkit eval`).
"""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

SYSTEMS = {"ssp-sam": "ssp_sam", "sam-cp": "sam_cp", "sam-mi": "sam_mi"}
"""Command-line system names to registry names (`samkit.systems.SYSTEMS`)."""

RUN_FORMAT = 1


def system_name(name: str) -> str:
    """Registry name of a command-line system name (`sam-cp` or `sam_cp`)."""
    key = name.replace("_", "-")
    if key not in SYSTEMS:
        raise ValueError(f"unknown system {name!r}; expected one of {sorted(SYSTEMS)}")
    return SYSTEMS[key]


def display_name(system: str) -> str:
    """Command-line name of a registry name."""
    return system.replace("_", "-")


def parse_assignments(items: list[str], *, option: str) -> dict[str, Any]:
    """Parse `FIELD=VALUE` items; values are JSON when they parse as JSON, else strings.

    Examples:
        >>> parse_assignments(["dim=64", "name=tiny", "taps=[1, 2]"], option="--set")
        {'dim': 64, 'name': 'tiny', 'taps': [1, 2]}
    """
    out: dict[str, Any] = {}
    for item in items:
        key, sep, raw = item.partition("=")
        if not sep or not key:
            raise ValueError(f"{option}: expected FIELD=VALUE, got {item!r}")
        try:
            out[key] = json.loads(raw)
        except json.JSONDecodeError:
            out[key] = raw
    return out


def write_json(path: Path, obj: Any) -> Path:
    """Write `obj` as indented JSON (files people read: `run.json`, `metrics.json`), atomically."""
    from samkit.data.writers import write_json as write_json_file  # imported when first needed

    return write_json_file(path, obj, indent=2)


@dataclass
class RunInfo:
    """The content of a run folder's `run.json`."""

    system: str
    train_data: str | None = None
    val_data: str | None = None
    class_names: list[str] | None = None
    num_things: int = 0
    task_options: dict[str, Any] = field(default_factory=dict)
    train_config: dict[str, Any] = field(default_factory=dict)
    finished: bool = False
    format: int = RUN_FORMAT

    def write(self, run: Path) -> None:
        """Write `run/run.json` atomically."""
        write_json(run / "run.json", asdict(self))

    @classmethod
    def read(cls, run: Path) -> RunInfo:
        """Read `run/run.json`, with errors that name the file."""
        path = run / "run.json"
        if not path.is_file():
            raise FileNotFoundError(
                f"{path}: not found; {run} is not a samkit run folder (made by `samkit train`)"
            )
        try:
            data = json.loads(path.read_text())
        except (OSError, json.JSONDecodeError) as err:
            raise ValueError(f"{path}: not a readable run file: {err}") from err
        if not isinstance(data, dict) or "system" not in data:
            raise ValueError(f"{path}: not a run file (no 'system' entry)")
        if int(data.get("format", 0)) > RUN_FORMAT:
            raise ValueError(
                f"{path}: run format {data['format']} is newer than this samkit "
                f"(reads {RUN_FORMAT}); upgrade samkit"
            )
        known = set(cls.__dataclass_fields__)
        return cls(**{k: v for k, v in data.items() if k in known})


def print_table(metrics: dict[str, float], *, title: str) -> None:
    """Print `name value` rows, aligned."""
    print(title)
    if not metrics:
        print("  (no metrics)")
        return
    width = max(len(k) for k in metrics)
    for key, value in metrics.items():
        shown = f"{value:.4f}" if isinstance(value, float) else str(value)
        print(f"  {key:<{width}}  {shown}")
