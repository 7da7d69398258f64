"""Save a trained system as a directory and load it back (Hugging Face's `save_pretrained`).

A saved directory holds two files:

* `model.safetensors`: the system's `state_dict`, minus the frozen backbones that were built
  from a checkpoint file (unless `include_backbones=True`);
* `config.json`: the system name, the full config dataclass, the vocabulary, how the CLIP
  backbone was resolved (activation, trainable policy), where each left-out backbone is read
  from and a fingerprint of its weights, the samkit version and the format version.

The weights are written first and the config last, each atomically; both carry the same random
`save_id`, so a reader that finds a config with weights from another save (a save interrupted
between the two files) gets an error instead of a silently mixed model. Loading reads safetensors
only (never a pickle) and is strict: a wrong system, missing or unexpected keys, shape
mismatches, an unreadable file or a newer format version raise errors that name the file.
See `docs/save-load.md`.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import os
import uuid
from collections.abc import Iterable, Mapping
from contextlib import AbstractContextManager
from dataclasses import dataclass
from pathlib import Path
from typing import Any, ClassVar, TypeVar, cast

import torch
from torch import Tensor, nn

from samkit._io import write_atomic
from samkit._precision import autocast, to_float32

__all__ = [
    "CONFIG_FILE",
    "BackboneSource",
    "FORMAT_VERSION",
    "WEIGHTS_FILE",
    "PretrainedModule",
    "load_pretrained",
    "read_pretrained_config",
]

FORMAT_VERSION = 1
"""Version of the saved-directory layout; loading refuses directories of a newer version."""

CONFIG_FILE = "config.json"
"""Name of the config file of a saved directory."""

WEIGHTS_FILE = "model.safetensors"
"""Name of the weights file of a saved directory."""

_FORMAT = "samkit-pretrained"
_SYSTEMS: dict[str, type[PretrainedModule]] = {}

M = TypeVar("M", bound="PretrainedModule")
_T = TypeVar("_T")


@dataclass(frozen=True)
class BackboneSource:
    """A backbone whose weights may come from a checkpoint file named in the config.

    Attributes:
        name: Short name for messages and `config.json` (`"sam"`, `"clip"`).
        field: The config field holding the checkpoint path.
        prefixes: `state_dict` key prefixes of the tensors that file provides and the system
            never trains (e.g. SSP-SAM's SAM image and prompt encoders, not its mask decoder).
        frozen: Whether the system's training recipe leaves these tensors unchanged (a CLIP
            that a stage fine-tunes is not frozen, so its weights are always saved).
    """

    name: str
    field: str
    prefixes: tuple[str, ...]
    frozen: bool = True


class PretrainedModule(nn.Module):
    """Base of the systems: `save_pretrained` and `from_pretrained`.

    Subclasses set `system_name` (the `samkit.systems.SYSTEMS` key), `display_name` and
    `config_class`, and implement `_build_from_config` and `_backbone_sources`.
    """

    system_name: ClassVar[str] = ""
    display_name: ClassVar[str] = ""
    config_class: ClassVar[type[Any]]
    config: Any

    def __init_subclass__(cls, **kwargs: Any) -> None:
        """Register concrete systems by `system_name` for `load_pretrained`."""
        super().__init_subclass__(**kwargs)
        if cls.system_name:
            _SYSTEMS[cls.system_name] = cls

    # ------------------------------------------------------------------ per-system hooks
    @classmethod
    def _build_from_config(cls, config: Any) -> PretrainedModule:
        """Build the system (random heads) from its config dataclass."""
        raise NotImplementedError

    def _backbone_sources(self) -> list[BackboneSource]:
        """The backbones that may be read from a checkpoint path of the config."""
        return []

    def _vocabulary(self) -> tuple[list[str] | None, int | None]:
        """Class names and number of thing classes to record (`None` without a vocabulary)."""
        return None, None

    def _set_vocabulary(self, class_names: list[str] | None, num_things: int | None) -> None:
        """Restore what `_vocabulary` recorded (systems whose config holds it do nothing)."""

    def _check_savable(self) -> None:
        """Raise if the module cannot be rebuilt from its config (e.g. custom backbones)."""

    # ------------------------------------------------------------------ precision
    def precision_context(self, device: torch.device | str) -> AbstractContextManager[Any]:
        """The autocast context of `config.precision` on `device`.

        See `docs/performance/precision.md`. `"fp32"` gives a no-op context (an enclosing
        autocast still applies); `"bf16"` gives `torch.autocast(device.type,
        dtype=torch.bfloat16)`. The systems enter it around their
        image encoders and decoders; tasks enter it around the encoders they call themselves.

        Raises:
            ValueError: If `config.precision` is not `"fp32"` or `"bf16"`.
        """
        return autocast(getattr(self.config, "precision", "fp32"), device)

    def precision_outputs(self, out: _T) -> _T:
        """`out` as the system returns it: float32 under `precision="bf16"`, else unchanged.

        With `"fp32"` nothing is cast, so a model cast with `.to(torch.bfloat16)` keeps
        returning bfloat16 (see `samkit._precision.to_float32` for what is cast).
        """
        if getattr(self.config, "precision", "fp32") == "bf16":
            return to_float32(out)
        return out

    # ------------------------------------------------------------------ save
    def save_pretrained(
        self, directory: str | os.PathLike[str], *, include_backbones: bool = False
    ) -> Path:
        """Save the system to `directory` (`config.json` + `model.safetensors`).

        Backbones built from a checkpoint path (`sam_checkpoint`, `clip_checkpoint`) and kept
        frozen are left out of `model.safetensors` and read again from that path when loading
        (a SHA-256 fingerprint of their weights is checked then); pass
        `include_backbones=True` for a self-contained directory. Backbones without a path
        (random initialisation, the `tiny` presets) and every trained tensor are always saved.
        The weights are saved as they are (dtype included); loading builds the system in
        float32 and copies them in.

        Args:
            directory: The directory (created if needed; files in it are replaced atomically).
            include_backbones: Also save the weights of backbones that came from a file.

        Returns:
            The directory.

        Raises:
            ValueError: If the system cannot be rebuilt from its config (e.g. SAM-MI built
                with a custom `sam=` or `clip=` module).
        """
        from safetensors.torch import save as safetensors_bytes

        import samkit

        self._check_savable()
        out = Path(directory)
        out.mkdir(parents=True, exist_ok=True)
        state = self.state_dict()
        params = dict(self.named_parameters())
        records: list[dict[str, Any]] = []
        omitted: set[str] = set()
        for src in self._backbone_sources():
            path = getattr(self.config, src.field)
            if path is None:
                continue
            keys = _keys_under(state, src.prefixes)
            trained = not src.frozen or any(params[k].requires_grad for k in keys if k in params)
            included = include_backbones or trained
            record: dict[str, Any] = {
                "name": src.name,
                "field": src.field,
                "path": os.fspath(path),
                "prefixes": list(src.prefixes),
                "included": included,
                "sha256": None,
            }
            if not included:
                record["sha256"] = _fingerprint({k: state[k] for k in keys})
                omitted.update(keys)
            records.append(record)
        tensors = _detached(state, omitted)
        save_id = uuid.uuid4().hex
        class_names, num_things = self._vocabulary()
        payload = {
            "format": _FORMAT,
            "format_version": FORMAT_VERSION,
            "samkit_version": samkit.__version__,
            "system": self.system_name,
            "class": type(self).__name__,
            "config": _config_to_json(self.config),
            "class_names": class_names,
            "num_things": num_things,
            "clip": _clip_record(self),
            "backbones": records,
            "save_id": save_id,
        }
        metadata = {"format": "pt", "samkit_save_id": save_id}
        write_atomic(out / WEIGHTS_FILE, safetensors_bytes(tensors, metadata=metadata))
        text = json.dumps(payload, indent=2, sort_keys=False) + "\n"
        write_atomic(out / CONFIG_FILE, text.encode("utf-8"))
        return out

    # ------------------------------------------------------------------ load
    @classmethod
    def from_pretrained(
        cls: type[M],
        directory: str | os.PathLike[str],
        *,
        map_location: str | torch.device = "cpu",
    ) -> M:
        """Load a system saved with `save_pretrained`.

        Args:
            directory: The saved directory.
            map_location: Device of the returned module.

        Returns:
            The system in eval mode, with its saved weights.

        Raises:
            FileNotFoundError: If the directory, a file of it, or the checkpoint of a left-out
                backbone is missing.
            ValueError: If `config.json` is unreadable, from a newer samkit, or holds another
                system; if the weights are unreadable, belong to another save, or their keys or
                shapes differ from the system's; or if a left-out backbone's file changed.
        """
        if not cls.system_name:  # PretrainedModule itself: any system
            return cast(M, load_pretrained(directory, map_location=map_location))
        root = Path(directory)
        data = read_pretrained_config(root)
        system = data["system"]
        if system != cls.system_name:
            other = _SYSTEMS.get(system)
            hint = f"{other.__name__}.from_pretrained or " if other else ""
            raise ValueError(
                f"{root / CONFIG_FILE}: holds a {system!r} system, not {cls.system_name!r} "
                f"({cls.__name__}); load it with {hint}samkit.systems.load_pretrained"
            )
        return cast(M, cls._load(root, data, torch.device(map_location)))

    @classmethod
    def _load(cls, root: Path, data: dict[str, Any], device: torch.device) -> PretrainedModule:
        config_file = root / CONFIG_FILE
        config = _config_from_json(cls, data["config"], config_file)
        records = _backbone_records(data, config_file)
        build: dict[str, Any] = {}
        for rec in records:
            if rec["included"]:
                build[rec["field"]] = None  # weights come from model.safetensors
            elif not Path(rec["path"]).is_file():
                raise FileNotFoundError(
                    f"{config_file}: the {rec['name']} weights were left out of {WEIGHTS_FILE} "
                    f"and are read from {rec['path']}, which does not exist; restore that file, "
                    "or save with save_pretrained(..., include_backbones=True) to make the "
                    "directory self-contained"
                )
        clip = data.get("clip") or {}
        if (
            "quick_gelu" in clip
            and getattr(config, "quick_gelu", "absent") is None
            and clip["quick_gelu"] is not None
        ):
            build["quick_gelu"] = bool(clip["quick_gelu"])
        model = cls._build_from_config(dataclasses.replace(config, **build))
        backbone = getattr(model, "clip", None)
        if clip.get("trainable_policy") not in (None, "none") and backbone is not None:
            backbone.set_trainable(clip["trainable_policy"])
        model.config = config
        model._set_vocabulary(data.get("class_names"), data.get("num_things"))
        state = model.state_dict()
        omitted = set()
        for rec in records:
            if not rec["included"]:
                keys = _keys_under(state, rec["prefixes"])
                if _fingerprint({k: state[k] for k in keys}) != rec["sha256"]:
                    raise ValueError(
                        f"{rec['path']}: the {rec['name']} weights in this file differ from "
                        f"those {root} was saved with (the file changed since); restore the "
                        "original file or re-save with include_backbones=True"
                    )
                omitted.update(keys)
        tensors = _read_weights(root, data["save_id"])
        _check_keys(
            root / WEIGHTS_FILE, tensors, {k: v for k, v in state.items() if k not in omitted}
        )
        model.load_state_dict(tensors, strict=False)
        return model.to(device).eval()


def load_pretrained(
    directory: str | os.PathLike[str], *, map_location: str | torch.device = "cpu"
) -> nn.Module:
    """Load any system saved with `save_pretrained`, dispatching on the system in its config.

    Args:
        directory: The saved directory.
        map_location: Device of the returned module.

    Returns:
        The `SSPSAM`, `SAMCP` or `SAMMI` module, in eval mode.

    Raises:
        FileNotFoundError: As `PretrainedModule.from_pretrained`.
        ValueError: As `PretrainedModule.from_pretrained`, or for an unknown system name.

    Examples:
        >>> import tempfile
        >>> from samkit.systems import build_ssp_sam
        >>> model = build_ssp_sam("tiny")
        >>> with tempfile.TemporaryDirectory() as d:
        ...     _ = model.save_pretrained(d)
        ...     type(load_pretrained(d)).__name__
        'SSPSAM'
    """
    root = Path(directory)
    data = read_pretrained_config(root)
    cls = _SYSTEMS.get(data["system"])
    if cls is None:
        raise ValueError(
            f"{root / CONFIG_FILE}: unknown system {data['system']!r}; expected one of "
            f"{sorted(_SYSTEMS)}"
        )
    return cls._load(root, data, torch.device(map_location))


def read_pretrained_config(directory: str | os.PathLike[str]) -> dict[str, Any]:
    """Read and check the `config.json` of a saved directory (no weights are read).

    Tools use it to learn a saved system's name and vocabulary (`"system"`,
    `"class_names"`, `"num_things"`) without building the model.

    Args:
        directory: The saved directory.

    Returns:
        The parsed JSON object.

    Raises:
        FileNotFoundError: If the directory or its `config.json` is missing.
        ValueError: If the file is not a samkit config, is unreadable, or has a newer format.
    """
    root = Path(directory)
    if not root.is_dir():
        raise FileNotFoundError(f"saved system directory not found: {root}")
    path = root / CONFIG_FILE
    if not path.is_file():
        raise FileNotFoundError(
            f"{path}: not found; a directory written by save_pretrained holds {CONFIG_FILE} and "
            f"{WEIGHTS_FILE}"
        )
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as err:
        raise ValueError(f"{path}: not a readable samkit config: {err}") from err
    if not isinstance(data, dict) or data.get("format") != _FORMAT:
        raise ValueError(
            f"{path}: not a samkit config (expected a JSON object with format {_FORMAT!r})"
        )
    version = data.get("format_version")
    if isinstance(version, bool) or not isinstance(version, int) or version < 1:
        raise ValueError(f"{path}: format_version must be an integer >= 1, got {version!r}")
    if version > FORMAT_VERSION:
        raise ValueError(
            f"{path}: written by a newer samkit ({data.get('samkit_version')}, format version "
            f"{version}); this samkit reads format versions up to {FORMAT_VERSION}: upgrade samkit"
        )
    for key, kind in (("system", str), ("config", dict), ("save_id", str)):
        if not isinstance(data.get(key), kind):
            raise ValueError(f"{path}: {key!r} must be a {kind.__name__}, got {data.get(key)!r}")
    return data


# ---------------------------------------------------------------------- helpers
def _keys_under(state: Mapping[str, Tensor], prefixes: Iterable[str]) -> list[str]:
    pre = tuple(p if p.endswith(".") else p + "." for p in prefixes)
    return [k for k in state if k.startswith(pre)]


def _fingerprint(tensors: Mapping[str, Tensor]) -> str:
    """SHA-256 over names, dtypes, shapes and bytes, in name order."""
    h = hashlib.sha256()
    for name in sorted(tensors):
        t = tensors[name].detach().to("cpu").contiguous()
        h.update(f"{name}|{t.dtype}|{tuple(t.shape)}|".encode())
        h.update(t.reshape(-1).view(torch.uint8).numpy().tobytes())
    return h.hexdigest()


def _detached(state: Mapping[str, Tensor], omitted: set[str]) -> dict[str, Tensor]:
    """CPU, contiguous tensors; any that share storage with an earlier one are copied."""
    out: dict[str, Tensor] = {}
    seen: set[int] = set()
    for k, v in state.items():
        if k in omitted:
            continue
        t = v.detach().to("cpu").contiguous()
        ptr = t.untyped_storage().data_ptr()
        if ptr in seen and t.numel():
            t = t.clone()
        seen.add(t.untyped_storage().data_ptr())
        out[k] = t
    return out


def _clip_record(model: nn.Module) -> dict[str, Any]:
    """How the CLIP backbone was resolved: activation and trainable policy."""
    clip = getattr(model, "clip", None)
    if clip is None or not hasattr(clip, "trainable_policy"):
        return {}
    quick = any(type(m).__name__ == "QuickGELU" for m in clip.modules())
    return {"quick_gelu": quick, "trainable_policy": clip.trainable_policy}


def _config_to_json(config: Any) -> dict[str, Any]:
    out = dataclasses.asdict(config)
    for k, v in out.items():
        if isinstance(v, os.PathLike):
            out[k] = os.fspath(v)
    return out


def _config_from_json(cls: type[PretrainedModule], raw: dict[str, Any], path: Path) -> Any:
    """The config dataclass from its JSON dict (JSON lists back to tuple fields)."""
    config_cls = cls.config_class
    fields = {f.name: f for f in dataclasses.fields(config_cls)}
    unknown = sorted(set(raw) - set(fields))
    if unknown:
        raise ValueError(f"{path}: unknown {config_cls.__name__} fields {unknown}")
    values = {}
    for name, value in raw.items():
        if str(fields[name].type).startswith("tuple") and isinstance(value, list):
            value = _tuples(value)
        values[name] = value
    try:
        return config_cls(**values)
    except TypeError as err:
        raise ValueError(f"{path}: invalid {config_cls.__name__}: {err}") from err


def _tuples(value: list[Any]) -> tuple[Any, ...]:
    return tuple(_tuples(v) if isinstance(v, list) else v for v in value)


def _backbone_records(data: dict[str, Any], path: Path) -> list[dict[str, Any]]:
    records = data.get("backbones", [])
    keys = {"name", "field", "path", "prefixes", "included", "sha256"}
    if not isinstance(records, list) or not all(
        isinstance(r, dict) and keys <= set(r) for r in records
    ):
        raise ValueError(f"{path}: 'backbones' must be a list of objects with keys {sorted(keys)}")
    return records


def _read_weights(root: Path, save_id: str) -> dict[str, Tensor]:
    from safetensors import safe_open

    from samkit._io import read_checkpoint

    path = root / WEIGHTS_FILE
    if not path.is_file():
        raise FileNotFoundError(f"{path}: not found (the weights of {root / CONFIG_FILE})")
    kind = "samkit model weights file"
    tensors = read_checkpoint(path, kind=kind)  # safetensors: no pickle
    with safe_open(str(path), framework="pt") as f:  # type: ignore[no-untyped-call]
        stored = (f.metadata() or {}).get("samkit_save_id")
    if stored != save_id:
        raise ValueError(
            f"{path}: belongs to another save than {root / CONFIG_FILE} (save ids {stored!r} and "
            f"{save_id!r}; was a save interrupted?); save the system again"
        )
    return dict(tensors)


def _check_keys(path: Path, tensors: Mapping[str, Tensor], expected: Mapping[str, Tensor]) -> None:
    missing = sorted(set(expected) - set(tensors))
    unexpected = sorted(set(tensors) - set(expected))
    shapes = [
        f"{k}: saved {tuple(tensors[k].shape)}, model {tuple(expected[k].shape)}"
        for k in sorted(set(tensors) & set(expected))
        if tensors[k].shape != expected[k].shape
    ]
    problems = []
    if missing:
        problems.append(f"missing keys ({len(missing)}): {_head(missing)}")
    if unexpected:
        problems.append(f"unexpected keys ({len(unexpected)}): {_head(unexpected)}")
    if shapes:
        problems.append(f"shape mismatches ({len(shapes)}): {_head(shapes)}")
    if problems:
        raise ValueError(
            f"{path}: does not match the system its config builds: " + "; ".join(problems)
        )


def _head(items: list[str], n: int = 8) -> str:
    more = f", ... ({len(items) - n} more)" if len(items) > n else ""
    return ", ".join(items[:n]) + more
