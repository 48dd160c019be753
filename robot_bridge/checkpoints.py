"""Checkpoint directories as content-addressed manifests, for chunked transfer to a station.

A checkpoint is a directory of files (``config.json`` + ``*.safetensors`` + tokenizer files). Its
identity is the sha256 of its manifest (relative path, size and sha256 of every file), so the same
weights always have the same id and a station can skip a transfer it already holds.
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
from dataclasses import dataclass
from pathlib import Path, PurePosixPath

CHUNK_BYTES = 1024 * 1024
MAX_CHECKPOINT_BYTES = 32 * 1024**3
MAX_FILES = 256


class CheckpointError(ValueError):
    pass


def sha256_file(path: str | Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(CHUNK_BYTES), b""):
            h.update(block)
    return h.hexdigest()


@dataclass(frozen=True)
class FileEntry:
    path: str  # relative, POSIX
    size: int
    sha256: str

    def to_dict(self) -> dict:
        return {"path": self.path, "size": self.size, "sha256": self.sha256}


def manifest_sha256(files: list[FileEntry]) -> str:
    entries = sorted((f.to_dict() for f in files), key=lambda e: e["path"])
    canonical = json.dumps(entries, sort_keys=True, separators=(",", ":"))
    return hashlib.sha256(canonical.encode()).hexdigest()


def build_manifest(checkpoint_dir: str | Path) -> tuple[str, list[FileEntry]]:
    """(checkpoint sha256, file entries) for every regular file under the directory."""
    root = Path(checkpoint_dir)
    if not (root / "config.json").is_file():
        raise CheckpointError(f"{root} is not a checkpoint directory: it has no config.json")
    files = []
    for p in sorted(root.rglob("*")):
        if p.is_file():
            files.append(
                FileEntry(p.relative_to(root).as_posix(), p.stat().st_size, sha256_file(p))
            )
    return manifest_sha256(files), files


def checked_entries(raw: object) -> list[FileEntry]:
    """Validate a manifest received over the wire: safe relative paths, sizes, hex digests."""
    if not isinstance(raw, list) or not 1 <= len(raw) <= MAX_FILES:
        raise CheckpointError(f"manifest must list 1..{MAX_FILES} files")
    entries, total = [], 0
    for item in raw:
        if not isinstance(item, dict):
            raise CheckpointError(f"manifest entry must be a map, got {item!r}")
        path, size, digest = item.get("path"), item.get("size"), item.get("sha256")
        if not isinstance(path, str) or not _safe_relative(path):
            raise CheckpointError(f"unsafe or invalid file path in manifest: {path!r}")
        if not isinstance(size, int) or isinstance(size, bool) or size < 0:
            raise CheckpointError(f"bad size for {path!r}: {size!r}")
        if not (
            isinstance(digest, str)
            and len(digest) == 64
            and all(c in "0123456789abcdef" for c in digest)
        ):
            raise CheckpointError(f"bad sha256 for {path!r}: {digest!r}")
        total += size
        entries.append(FileEntry(path, size, digest))
    if total > MAX_CHECKPOINT_BYTES:
        raise CheckpointError(f"checkpoint is {total} bytes; the limit is {MAX_CHECKPOINT_BYTES}")
    if "config.json" not in {e.path for e in entries}:
        raise CheckpointError("manifest has no config.json")
    return entries


def _safe_relative(path: str) -> bool:
    p = PurePosixPath(path)
    return (
        bool(path)
        and not p.is_absolute()
        and ".." not in p.parts
        and "\\" not in path
        and "\x00" not in path
    )


class CheckpointStore:
    """Checkpoints a station holds, under ``root/<sha256>/``, assembled from chunked uploads."""

    def __init__(self, root: str | Path) -> None:
        self.root = Path(root)
        self.root.mkdir(parents=True, exist_ok=True)

    def path(self, sha: str) -> Path:
        return self.root / sha

    def has(self, sha: str) -> bool:
        # the marker sits beside the directory, so the stored checkpoint is byte-identical to the sent one
        return (self.root / f"{sha}.verified").is_file() and (self.root / sha).is_dir()

    def begin(self, sha: str, entries: list[FileEntry]) -> Path:
        if manifest_sha256(entries) != sha:
            raise CheckpointError("checkpoint sha256 does not match its manifest")
        staging = self.root / f".upload-{sha}"
        shutil.rmtree(staging, ignore_errors=True)
        staging.mkdir(parents=True)
        for e in entries:
            target = staging / e.path
            target.parent.mkdir(parents=True, exist_ok=True)
            with open(target, "wb") as f:
                f.truncate(e.size)
        return staging

    def write_chunk(self, sha: str, entry: FileEntry, offset: int, data: memoryview) -> None:
        if offset < 0 or offset + data.nbytes > entry.size:
            raise CheckpointError(
                f"chunk [{offset}, {offset + data.nbytes}) is outside {entry.path} (size {entry.size})"
            )
        staging = self.root / f".upload-{sha}"
        if not staging.is_dir():
            raise CheckpointError(f"no upload in progress for checkpoint {sha[:12]}")
        with open(staging / entry.path, "r+b") as f:
            f.seek(offset)
            f.write(data)

    def commit(self, sha: str, entries: list[FileEntry]) -> Path:
        """Verify every file's sha256, then move the checkpoint into place atomically."""
        staging = self.root / f".upload-{sha}"
        bad = [e.path for e in entries if sha256_file(staging / e.path) != e.sha256]
        if bad:
            raise CheckpointError(f"sha256 mismatch after transfer for: {', '.join(bad)}")
        final = self.root / sha
        if final.exists():
            shutil.rmtree(final)
        os.replace(staging, final)
        (self.root / f"{sha}.verified").write_text(sha)
        return final
