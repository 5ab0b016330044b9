"""The one integrity check for checkpoint folders: a content digest per tensor and a fingerprint per weight file.

``save_*`` records both in ``sparse24_config.json`` (``integrity``); every loader verifies them before it builds a
model, so a folder that was partly rewritten (a plain ``save_pretrained`` over a compressed folder), a bit flip in the
compressed metadata, a flipped ``transposed`` flag or an injected alias is refused, naming the tensor or the file,
instead of loading other weights. Digests are SHA-256 over dtype, shape and raw bytes (full, not sampled); file
fingerprints are :func:`sparse24.fileio.file_fingerprint` (size + sampled content, full below 4 MiB).
"""

from __future__ import annotations

import hashlib
from collections.abc import Iterable, Mapping
from pathlib import Path

import torch

from sparse24.fileio import file_fingerprint

__all__ = ["tensor_digest", "digest_tensors", "verify_tensors", "weight_files", "fingerprint_files", "verify_files",
           "IntegrityError", "FIX"]

FIX = ("re-save the model with sparse24.save_sparse (or the saver that wrote it), or delete sparse24_config.json and "
       "the sparse24 files to load the folder as a plain HF model")


class IntegrityError(ValueError):
    """A checkpoint's content differs from what its ``sparse24_config.json`` recorded."""


def tensor_digest(t: torch.Tensor) -> str:
    """SHA-256 (16 hex) of ``t``'s dtype, shape and bytes; equal iff the tensors are bit-identical (same layout)."""
    t = t.detach().to("cpu").contiguous()
    h = hashlib.sha256(f"{t.dtype}|{tuple(t.shape)}|".encode())
    if t.numel():
        h.update(t.reshape(-1).view(torch.uint8).numpy())
    return h.hexdigest()[:16]


def digest_tensors(tensors: Mapping[str, torch.Tensor]) -> dict[str, str]:
    """``{name: tensor_digest}`` for every tensor (tied tensors appear under each name)."""
    return {k: tensor_digest(v) for k, v in tensors.items()}


def verify_tensors(tensors: Mapping[str, torch.Tensor], recorded: Mapping[str, str], where: str | Path) -> None:
    """Raise :class:`IntegrityError` naming the first tensor whose digest differs, that was not recorded, or that is
    missing (a missing name is accepted only when a present tensor has its digest: a tied weight the saver dropped)."""
    present = set()
    for key, t in tensors.items():
        want = recorded.get(key)
        if want is None:
            raise IntegrityError(f"{where}: tensor {key} is not in the checkpoint's integrity record (an injected or "
                                 f"renamed entry); the file was modified after it was saved: {FIX}")
        got = tensor_digest(t)
        if got != want:
            raise IntegrityError(f"{where}: tensor {key} does not match its recorded content hash ({got} != {want}); "
                                 f"the file is corrupt or was modified after it was saved: {FIX}")
        present.add(got)
    missing = [k for k, d in recorded.items() if k not in tensors and d not in present]
    if missing:
        raise IntegrityError(f"{where}: tensor {missing[0]} ({len(missing)} in all) is recorded but missing; the "
                             f"checkpoint is incomplete: {FIX}")


def weight_files(folder: Path, own: Iterable[str] = ()) -> list[str]:
    """Names of the HF weight files in ``folder`` (``*.safetensors``, their index, pickled ``*.bin``), not ``own``."""
    own = set(own)
    pats = ("*.safetensors", "*.safetensors.index.json", "*.bin", "*.bin.index.json")
    return sorted({p.name for pat in pats for p in folder.glob(pat) if p.is_file() and p.name not in own})


def fingerprint_files(folder: Path, names: Iterable[str]) -> dict[str, str]:
    """``{name: file_fingerprint}`` for files in ``folder``."""
    return {n: file_fingerprint(folder / n) for n in names}


def _readable(path: Path) -> bool:
    """Whether a safetensors file's header parses and its data is as long as the header says."""
    import json
    import struct

    try:
        with open(path, "rb") as f:
            (n,) = struct.unpack("<Q", f.read(8))
            if n > path.stat().st_size:
                return False
            header = json.loads(f.read(n))
        end = max((v["data_offsets"][1] for k, v in header.items() if k != "__metadata__"), default=0)
        return path.stat().st_size >= 8 + n + end
    except (OSError, ValueError, KeyError, TypeError, struct.error):
        return False


def verify_files(folder: Path, recorded: Mapping[str, str], own: Iterable[str] = ()) -> None:
    """Refuse a folder whose HF weight files are not exactly the recorded ones with the recorded fingerprints."""
    now = weight_files(folder, own)
    for name in sorted(set(now) | set(recorded)):
        if name not in recorded:
            raise IntegrityError(f"{folder / name} was written after this checkpoint was saved (it is not in "
                                 f"sparse24_config.json), so the sparse24 files may be stale: {FIX}")
        if name not in now:
            raise IntegrityError(f"{folder / name} is missing; the checkpoint is incomplete: {FIX}")
        if file_fingerprint(folder / name) != recorded[name]:
            if name.endswith(".safetensors") and not _readable(folder / name):
                raise IntegrityError(f"{folder / name} is truncated or corrupt (it no longer matches the fingerprint "
                                     f"recorded at save time); copy the folder again, or {FIX}")
            raise IntegrityError(f"{folder / name} changed after this checkpoint was saved (content fingerprint "
                                 "differs), e.g. a plain save_pretrained wrote over it, so the sparse24 files in the "
                                 f"folder are stale: {FIX}")
