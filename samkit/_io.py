"""Reading checkpoint files: the one place where samkit opens `.pth` / `.pt` / `.safetensors`.

Every loader (SAM, CLIP, the SSP-SAM official release, the examples' resume states) reads through
`read_checkpoint`, so that

* pickles are only ever read with `torch.load(..., weights_only=True)`, passed explicitly, so
  `TORCH_FORCE_NO_WEIGHTS_ONLY_LOAD=1` (which only changes torch's *default*) cannot turn a
  crafted file into code execution;
* a file that cannot be read (empty, truncated, garbage, or holding Python objects other than
  tensors and plain containers) raises a `ValueError` that names the file and the kind of
  checkpoint that was expected, with the original error chained.
"""

from __future__ import annotations

import os
import pickle
import tempfile
import warnings
import zipfile
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import torch

__all__ = ["is_torchscript_archive", "read_checkpoint", "write_atomic"]


def is_torchscript_archive(path: str | os.PathLike[str]) -> bool:
    """Whether a file is a TorchScript archive (`torch.jit.save`), by torch's own rule.

    torch recognises TorchScript zips by a `constants.pkl` record, which `torch.save` never
    writes; a legacy (non-zip) or unreadable file is not an archive.

    Args:
        path: The file.

    Returns:
        True for a zip file holding a `constants.pkl` record.
    """
    try:
        if not zipfile.is_zipfile(path):
            return False
        with zipfile.ZipFile(path) as archive:
            return any(n.rsplit("/", 1)[-1] == "constants.pkl" for n in archive.namelist())
    except (OSError, zipfile.BadZipFile):
        return False


def _unreadable(path: Path, kind: str, reason: str) -> ValueError:
    return ValueError(f"{path}: not a readable {kind}: {reason}")


def _reason(path: Path, err: BaseException) -> str:
    """A short, safe description of why torch / safetensors could not read a file."""
    size = path.stat().st_size if path.exists() else -1
    if size == 0:
        return "the file is empty (0 bytes)"
    text = str(err).strip()
    if "WeightsUnpickler error:" in text:  # drop torch's advice to retry with weights_only=False
        text = text.split("WeightsUnpickler error:", 1)[1].strip()
        return f"its contents are not a pickle that torch can read ({text.splitlines()[0]})"
    if isinstance(err, EOFError):
        return f"the file ends early ({size} bytes; truncated?)"
    return f"{_summary(err)} ({size} bytes; truncated or not a checkpoint?)"


def _summary(err: BaseException) -> str:
    """`Type: first sentence of the message`, at most 200 characters."""
    lines = [line.strip() for line in str(err).splitlines() if line.strip()]
    first = lines[0].split(". ")[0] if lines else ""
    return f"{type(err).__name__}: {first[:200]}" if first else type(err).__name__


def _unsafe_globals(path: Path) -> list[str]:
    """The Python globals a `torch.save` zip file would need beyond tensors; [] if unknown."""
    try:
        return list(torch.serialization.get_unsafe_globals_in_checkpoint(str(path)))
    except Exception:  # noqa: BLE001 - only a hint for the message; the load error is chained
        return []


def read_checkpoint(
    path: str | os.PathLike[str],
    *,
    kind: str,
    safe_globals: Sequence[Any] = (),
    torchscript: bool = False,
) -> Any:
    """Read a checkpoint file safely, on the CPU.

    `.safetensors` files are read with `safetensors.torch.load_file`. Anything else is read with
    `torch.load(map_location="cpu", weights_only=True)`: tensors, numbers, strings and plain
    containers only (plus `safe_globals`). A TorchScript archive is loaded with `torch.jit.load`
    when `torchscript` is True (its TorchScript unpickler cannot build arbitrary Python objects
    either) and refused otherwise.

    Args:
        path: The file.
        kind: What the file should be, for messages (e.g. `"SAM checkpoint"`).
        safe_globals: Extra classes `torch.load` may build (e.g. `argparse.Namespace`).
        torchscript: Accept TorchScript archives and return the loaded `ScriptModule`.

    Returns:
        The stored object (a dict of tensors for `.safetensors`), or the `ScriptModule` of a
        TorchScript archive.

    Raises:
        FileNotFoundError: If `path` is not a file.
        ValueError: If the file is not a readable checkpoint (empty, truncated, corrupt, a
            TorchScript archive where none is accepted, or holding Python objects beyond the
            allowed ones); the message names the file and `kind`, the original error is chained.
    """
    p = Path(path)
    if not p.is_file():
        raise FileNotFoundError(f"{kind} not found: {p}")
    if p.suffix == ".safetensors":
        from safetensors.torch import load_file

        try:
            return load_file(str(p), device="cpu")
        except Exception as err:
            raise _unreadable(
                p, kind, f"not a valid .safetensors file ({_reason(p, err)})"
            ) from err
    if is_torchscript_archive(p):
        if not torchscript:
            raise _unreadable(
                p, kind, "it is a TorchScript archive (torch.jit.save), not a torch.save file"
            )
        try:
            with warnings.catch_warnings():  # the only reader of such archives is deprecated
                warnings.simplefilter("ignore", FutureWarning)
                return torch.jit.load(str(p), map_location="cpu")
        except Exception as err:
            reason = f"a TorchScript archive that torch cannot load ({_summary(err)})"
            raise _unreadable(p, kind, reason) from err
    try:
        with torch.serialization.safe_globals(list(safe_globals)):
            return torch.load(str(p), map_location="cpu", weights_only=True)
    except pickle.UnpicklingError as err:
        unsafe = _unsafe_globals(p)
        if unsafe:
            raise _unreadable(
                p,
                kind,
                f"it stores Python objects ({', '.join(unsafe[:5])}) and samkit only reads "
                "tensors and plain containers (torch.load with weights_only=True), because "
                "unpickling anything else can run arbitrary code. If you trust the file, re-save "
                "just its tensors (a state dict) with torch.save or safetensors.",
            ) from err
        raise _unreadable(p, kind, _reason(p, err)) from err
    except Exception as err:
        raise _unreadable(p, kind, _reason(p, err)) from err


def _umask() -> int:
    """The process umask (read by setting and restoring it)."""
    mask = os.umask(0o022)
    os.umask(mask)
    return mask


def write_atomic(path: str | os.PathLike[str], data: bytes) -> None:
    """Write a file so that a reader sees the old file or the whole new one, never a part.

    The bytes go to a temporary file in the same directory, are flushed and fsynced, and the
    temporary file is renamed over `path` with `os.replace`; the directory is fsynced too where
    the platform allows it. The file gets the permissions `open()` would give a new file
    (`0o666` less the umask), not `mkstemp`'s owner-only `0o600`.

    Args:
        path: The destination file.
        data: Its complete contents.
    """
    p = Path(path)
    fd, tmp = tempfile.mkstemp(prefix=f".{p.name}.", suffix=".tmp", dir=p.parent)
    try:
        os.chmod(tmp, 0o666 & ~_umask())
        with os.fdopen(fd, "wb") as f:
            f.write(data)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, p)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
    fsync_dir(p.parent)


def write_pil_image(path: str | os.PathLike[str], image: Any, fmt: str, **options: Any) -> Path:
    """Encode a PIL image in memory and write it with `write_atomic` (parent folders created).

    Args:
        path: The destination file.
        image: A `PIL.Image.Image`.
        fmt: The Pillow format name (`"PNG"`, `"JPEG"`, ...).
        **options: Encoder options for `Image.save` (e.g. `quality=95`).

    Returns:
        The path written.
    """
    import io

    p = Path(path)
    p.parent.mkdir(parents=True, exist_ok=True)
    buffer = io.BytesIO()
    image.save(buffer, format=fmt, **options)
    write_atomic(p, buffer.getvalue())
    return p


def fsync_dir(folder: str | os.PathLike[str]) -> None:
    """Flush a directory's entries (a rename into it) to disk, where the platform allows it."""
    try:
        dir_fd = os.open(folder, os.O_RDONLY)
    except OSError:  # e.g. Windows cannot open directories
        return
    try:
        os.fsync(dir_fd)
    finally:
        os.close(dir_fd)
