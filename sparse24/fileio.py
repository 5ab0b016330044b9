"""Files written safely: atomic writes (temp name + ``os.replace``), the one output-path guard, content fingerprints.

Every writer in sparse24 goes through here, so a killed job leaves either the old file or the new one, never half of
one, and no command can write over its own input.
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
from pathlib import Path
from typing import Any

__all__ = ["atomic_write_text", "atomic_write_bytes", "atomic_write_json", "atomic_save_safetensors", "atomic_folder",
           "check_output_path", "file_fingerprint", "json_fingerprint", "clean_stale_temps", "copy_tokenizer_files",
           "TOKENIZER_FILES", "TOKENIZER_COMPANIONS"]


def _tmp(path: Path) -> Path:
    return path.with_name(f".{path.name}.tmp-{os.getpid()}")


def atomic_write_bytes(path: str | os.PathLike, data: bytes) -> Path:
    """Write ``data`` to ``path`` through a temporary file in the same folder and an atomic rename."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = _tmp(path)
    try:
        with open(tmp, "wb") as f:
            f.write(data)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    finally:
        tmp.unlink(missing_ok=True)
    return path


def atomic_write_text(path: str | os.PathLike, text: str) -> Path:
    """UTF-8 text, atomically (see :func:`atomic_write_bytes`)."""
    return atomic_write_bytes(path, text.encode("utf-8"))


def atomic_write_json(path: str | os.PathLike, obj: Any) -> Path:
    """Indented JSON, atomically; values JSON cannot hold are written with ``str``."""
    return atomic_write_text(path, json.dumps(obj, indent=2, default=str) + "\n")


def atomic_save_safetensors(tensors: dict, path: str | os.PathLike, metadata: dict[str, str] | None = None) -> Path:
    """``safetensors`` file (tensors made contiguous and moved to the CPU), atomically."""
    from safetensors.torch import save_file

    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = _tmp(path)
    try:
        save_file({k: v.detach().contiguous().cpu() for k, v in tensors.items()}, str(tmp), metadata=metadata)
        os.replace(tmp, path)
    finally:
        tmp.unlink(missing_ok=True)
    return path


TOKENIZER_FILES = ("tokenizer.json", "tokenizer_config.json", "tokenizer.model", "vocab.json")  # any: a tokenizer
TOKENIZER_COMPANIONS = ("special_tokens_map.json", "added_tokens.json", "merges.txt", "vocab.txt", "spiece.model",
                        "chat_template.jinja", "chat_template.json")  # belong to it when present


def copy_tokenizer_files(src: str | os.PathLike, dst: str | os.PathLike) -> list[str]:
    """Copy a model folder's tokenizer files (:data:`TOKENIZER_FILES` and :data:`TOKENIZER_COMPANIONS`) into ``dst``
    verbatim, each atomically; returns the names copied. Cheaper than loading and re-saving the tokenizer, and
    nothing in them is re-serialised."""
    src, dst = Path(src), Path(dst)
    names = [n for n in TOKENIZER_FILES + TOKENIZER_COMPANIONS if (src / n).is_file()]
    if not names:
        raise FileNotFoundError(f"{src} holds no tokenizer file ({', '.join(TOKENIZER_FILES[:3])}, ...); save the "
                                "tokenizer next to the model (tokenizer.save_pretrained(folder))")
    for n in names:
        atomic_write_bytes(dst / n, (src / n).read_bytes())
    return names


class atomic_folder:
    """Context manager yielding a temporary folder that replaces ``path`` only if the block succeeds."""

    def __init__(self, path: str | os.PathLike, overwrite: bool = False) -> None:
        self.path = Path(path)
        if self.path.exists() and not overwrite:
            raise FileExistsError(f"{self.path} already exists; choose another output folder or pass overwrite=True "
                                  "(--overwrite on the command line)")
        self.tmp = self.path.with_name(f".{self.path.name}.tmp-{os.getpid()}")

    def __enter__(self) -> Path:
        shutil.rmtree(self.tmp, ignore_errors=True)
        self.tmp.mkdir(parents=True)
        return self.tmp

    def __exit__(self, exc_type, exc, tb) -> None:
        if exc_type is not None:
            shutil.rmtree(self.tmp, ignore_errors=True)
            return
        old = self.path.with_name(f".{self.path.name}.old-{os.getpid()}")
        if self.path.exists():
            os.replace(self.path, old)
        os.replace(self.tmp, self.path)
        shutil.rmtree(old, ignore_errors=True)


def _overlap(a: Path, b: Path) -> str | None:
    if a == b:
        return "is"
    if b in a.parents:
        return "sits inside"
    if a in b.parents:
        return "contains"
    return None


def check_output_path(out: str | os.PathLike, inputs: list[str | os.PathLike] = (), *, overwrite: bool = False,
                      kind: str = "folder", allow_existing: bool = False) -> Path:
    """Validate an output path before any work starts; returns it resolved.

    Refuses an output that is, contains or sits inside any input (``--overwrite`` never deletes a source), an existing
    non-empty output without ``overwrite`` (unless ``allow_existing``), and a folder where a file is expected (or the
    reverse). The parent folder must be writable.
    """
    path = Path(out).expanduser().resolve()
    for src in inputs:
        if src is None:
            continue
        s = Path(src).expanduser().resolve()
        rel = _overlap(path, s)
        if rel:
            raise ValueError(f"output {out} {rel} the input {src}; writing there would destroy the input: choose an "
                             "output path outside it")
    if kind == "file" and path.is_dir():
        raise ValueError(f"output {out} is a folder; pass a file path (e.g. {Path(out) / 'results.json'})")
    if kind == "folder" and path.is_file():
        raise ValueError(f"output {out} is a file; pass a folder path")
    exists = path.is_file() or (path.is_dir() and any(path.iterdir()))
    if exists and not overwrite and not allow_existing:
        raise FileExistsError(f"{out} already exists and is not empty; pass --overwrite to replace it, or choose "
                              "another output path")
    parent = path.parent
    while not parent.exists():
        parent = parent.parent
    if not os.access(parent, os.W_OK):
        raise PermissionError(f"cannot write to {parent} (read-only); choose an output path you can write to")
    return path


def file_fingerprint(path: str | os.PathLike, sample_bytes: int = 1 << 20) -> str:
    """Content fingerprint of a file: size + SHA-256 of its first and last ``sample_bytes`` and 8 evenly spaced
    ``sample_bytes // 8`` chunks in between (safetensors files: the header and a sample of every region). Cheap on
    multi-GB shards; any change to the header, the size or a sampled region changes it. Full hash below 4 MiB."""
    path = Path(path)
    size = path.stat().st_size
    h = hashlib.sha256(str(size).encode())
    with open(path, "rb") as f:
        if size <= 4 * sample_bytes:
            h.update(f.read())
        else:
            h.update(f.read(sample_bytes))
            step = (size - 2 * sample_bytes) // 9
            for i in range(1, 9):
                f.seek(sample_bytes + i * step)
                h.update(f.read(sample_bytes // 8))
            f.seek(size - sample_bytes)
            h.update(f.read(sample_bytes))
    return h.hexdigest()[:16]


def json_fingerprint(obj: Any) -> str:
    """SHA-256 (16 hex) of the canonical JSON of ``obj``."""
    return hashlib.sha256(json.dumps(obj, sort_keys=True, default=str).encode()).hexdigest()[:16]


def _running(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # someone else's live process
        return True
    return True


def clean_stale_temps(path: str | os.PathLike) -> list[str]:
    """Clean what killed atomic writes left around ``path``; returns one line per thing found, for the user.

    Removes ``.<name>.tmp-<pid>`` next to ``path`` (and ``.*.tmp-<pid>`` inside it, when it is a folder) whose process
    is no longer running; leaves a live process's temporaries alone. ``.<name>.old-<pid>`` (what ``path`` held
    before a replacement that was killed half-way) is reported, never deleted.
    """
    path = Path(path)
    found = list(path.parent.glob(f".{path.name}.tmp-*")) + (list(path.glob(".*.tmp-*")) if path.is_dir() else [])
    lines = []
    for tmp in sorted(found):
        pid = tmp.name.rpartition("-")[2]
        if not pid.isdigit():
            continue
        if int(pid) != os.getpid() and _running(int(pid)):
            lines.append(f"{tmp} belongs to running process {pid}; left alone")
            continue
        shutil.rmtree(tmp, ignore_errors=True) if tmp.is_dir() else tmp.unlink(missing_ok=True)
        lines.append(f"removed {tmp}, left by a killed write (process {pid})")
    for old in sorted(path.parent.glob(f".{path.name}.old-*")):
        lines.append(f"{old} holds what {path} held before a replacement that was killed half-way; check it, then "
                     "delete it or move it back")
    return lines
