"""Checkpoint directories as content-addressed manifests, for chunked transfer to a station.

A checkpoint is a directory of files (``config.json`` + ``*.safetensors`` + tokenizer files). Its
identity is the sha256 of its manifest (relative path, size and sha256 of every file), so the same
weights always have the same id and a station can skip a transfer it already holds.

A checkpoint that arrives over the wire is data, never code: the store accepts only the file kinds
in ``DATA_SUFFIXES`` (no Python, no pickle) and no JSON that names remote code (``auto_map``), and
names the file it refused. Ids on the wire are content addresses only (64 lower-case hex digits),
so no wire field can name a path. The store has a size cap: committing past it evicts the least
recently used checkpoints no job is using, or fails with a clear error.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import os
import re
import shutil
from collections.abc import Collection
from dataclasses import dataclass
from pathlib import Path, PurePosixPath

CHUNK_BYTES = 1024 * 1024
MAX_CHECKPOINT_BYTES = 32 * 1024**3
MAX_FILES = 256
# Weights, configs, tokenizers (JSON / BPE merges / SentencePiece) and chat templates (rendered
# by transformers in a sandbox). Nothing a loader could import or unpickle.
DATA_SUFFIXES = (".json", ".safetensors", ".txt", ".model", ".jinja")
# transformers imports the module an ``auto_map`` names when trust_remote_code is on.
REMOTE_CODE_KEYS = frozenset({"auto_map"})
_CONTENT_ADDRESS = re.compile(r"[0-9a-f]{64}")
_STAGING_PREFIX = ".upload-"
_TRASH_PREFIX = ".trash-"


class CheckpointError(ValueError):
    pass


def check_checkpoint_id(value: object) -> str:
    """A checkpoint id from the wire: the content address, never a path."""
    if not (isinstance(value, str) and _CONTENT_ADDRESS.fullmatch(value)):
        raise CheckpointError(
            f"checkpoint id must be a sha256 content address (64 lower-case hex digits), got {value!r}"
        )
    return value


def refuse_code_file(path: str) -> None:
    """Refuse a file name (from a manifest) that is not a data file."""
    if not path.endswith(DATA_SUFFIXES):
        raise CheckpointError(
            f"refused file {path!r}: a checkpoint sent to a station holds data only "
            f"({', '.join(DATA_SUFFIXES)}); code and pickles are never loaded"
        )


def refuse_code(checkpoint_dir: str | Path) -> None:
    """Check that a stored checkpoint is data only: data file kinds, regular files, no JSON that
    names remote code. Raises CheckpointError naming the first file refused and why."""
    root = Path(checkpoint_dir)
    for p in sorted(root.rglob("*")):
        rel = p.relative_to(root).as_posix()
        if p.is_symlink():
            raise CheckpointError(f"refused file {rel!r}: symbolic links are not data")
        if p.is_dir():
            continue
        refuse_code_file(rel)
        if rel.endswith(".json"):
            _refuse_remote_code_json(p, rel)


def _refuse_remote_code_json(path: Path, rel: str) -> None:
    try:
        doc = json.loads(path.read_text())
    except (ValueError, RecursionError, UnicodeDecodeError) as e:
        raise CheckpointError(
            f"refused file {rel!r}: not valid JSON ({type(e).__name__})"
        ) from None
    stack = [doc]
    while stack:
        node = stack.pop()
        if isinstance(node, dict):
            named = REMOTE_CODE_KEYS.intersection(node)
            if named:
                raise CheckpointError(
                    f"refused file {rel!r}: it names remote code ({sorted(named)[0]!r}); a station "
                    "never imports code from a checkpoint"
                )
            stack.extend(node.values())
        elif isinstance(node, list):
            stack.extend(node)


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
        refuse_code_file(path)
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
    """Checkpoints a station holds, under ``root/<sha256>/``, assembled from chunked uploads.

    ``max_bytes`` caps what the store holds (committed checkpoints plus the declared size of
    uploads in progress). Making room evicts the least recently used checkpoints, except those in
    ``in_use``; if that is not enough, ``begin`` refuses with a clear error.
    """

    def __init__(self, root: str | Path, max_bytes: int = MAX_CHECKPOINT_BYTES * 4) -> None:
        if max_bytes < 1:
            raise ValueError(f"max_bytes must be >= 1, got {max_bytes}")
        self.root = Path(root)
        self.max_bytes = int(max_bytes)
        self.root.mkdir(parents=True, exist_ok=True)

    def path(self, sha: str) -> Path:
        return self.root / check_checkpoint_id(sha)

    def has(self, sha: str) -> bool:
        # the marker sits beside the directory, so the stored checkpoint is byte-identical to the sent one
        return self._marker(sha).is_file() and self.path(sha).is_dir()

    def touch(self, sha: str) -> None:
        """Mark a checkpoint as just used (eviction takes the least recently used first)."""
        os.utime(self._marker(sha))

    def _marker(self, sha: str) -> Path:
        return self.root / f"{check_checkpoint_id(sha)}.verified"

    def _staging(self, sha: str) -> Path:
        return self.root / f"{_STAGING_PREFIX}{check_checkpoint_id(sha)}"

    # --- size cap ----------------------------------------------------------------------------

    def committed(self) -> dict[str, int]:
        """sha256 -> bytes of every committed checkpoint."""
        out = {}
        for marker in self.root.glob("*.verified"):
            sha = marker.name.removesuffix(".verified")
            d = self.root / sha
            if _CONTENT_ADDRESS.fullmatch(sha) and d.is_dir():
                out[sha] = sum(p.stat().st_size for p in d.rglob("*") if p.is_file())
        return out

    def make_room(self, nbytes: int, pending: int = 0, in_use: Collection[str] = ()) -> list[str]:
        """Evict least recently used checkpoints until ``nbytes`` more fit; returns the evicted."""
        limit = min(self.max_bytes, MAX_CHECKPOINT_BYTES)
        if nbytes > limit:
            raise CheckpointError(f"checkpoint is {nbytes} bytes; the limit is {limit}")
        sizes = self.committed()
        used = sum(sizes.values()) + pending
        evicted = []
        by_age = sorted(sizes, key=lambda s: self._marker(s).stat().st_mtime)
        for sha in by_age:
            if used + nbytes <= self.max_bytes:
                break
            if sha in in_use:
                continue
            self.remove(sha)
            used -= sizes[sha]
            evicted.append(sha)
        if used + nbytes > self.max_bytes:
            raise CheckpointError(
                f"checkpoint store {self.root} is full: {used} of {self.max_bytes} bytes used by "
                f"checkpoints in use or uploads in progress; a {nbytes}-byte checkpoint does not fit "
                "(wait for the running job, or raise the station's --checkpoint-store-gb)"
            )
        return evicted

    def remove(self, sha: str) -> None:
        """Forget a checkpoint at once (a rename); ``purge_trash`` deletes its bytes later."""
        self._marker(sha).unlink(missing_ok=True)  # first: a half-removed checkpoint is not held
        with contextlib.suppress(FileNotFoundError):
            os.replace(self.path(sha), self.root / f"{_TRASH_PREFIX}{sha}-{os.urandom(4).hex()}")

    def purge_trash(self) -> None:
        for d in self.root.glob(f"{_TRASH_PREFIX}*"):
            shutil.rmtree(d, ignore_errors=True)

    # --- uploads -----------------------------------------------------------------------------

    def begin(self, sha: str, entries: list[FileEntry]) -> Path:
        if manifest_sha256(entries) != check_checkpoint_id(sha):
            raise CheckpointError("checkpoint sha256 does not match its manifest")
        staging = self._staging(sha)
        if staging.exists():  # an earlier attempt at the same upload: set it aside, bytes later
            os.replace(staging, self.root / f"{_TRASH_PREFIX}{sha}-{os.urandom(4).hex()}")
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
        staging = self._staging(sha)
        if not staging.is_dir():
            raise CheckpointError(f"no upload in progress for checkpoint {sha[:12]}")
        with open(staging / entry.path, "r+b") as f:
            f.seek(offset)
            f.write(data)

    def commit(self, sha: str, entries: list[FileEntry]) -> Path:
        """Verify every file's sha256 and that it is data only, then move it into place atomically.

        Slow for large checkpoints (it reads every byte): the station runs it off its socket thread.
        """
        staging = self._staging(sha)
        try:
            bad = [e.path for e in entries if sha256_file(staging / e.path) != e.sha256]
            if bad:
                raise CheckpointError(f"sha256 mismatch after transfer for: {', '.join(bad)}")
            refuse_code(staging)
        except CheckpointError:
            shutil.rmtree(staging, ignore_errors=True)
            raise
        final = self.path(sha)
        if final.exists():
            shutil.rmtree(final)
        os.replace(staging, final)
        self._marker(sha).write_text(sha)
        return final

    def discard(self, sha: str) -> None:
        """Drop an unfinished upload's staging folder (slow for big ones: not on the socket thread)."""
        shutil.rmtree(self._staging(sha), ignore_errors=True)

    def discard_all_staging(self) -> list[str]:
        """At start-up: uploads a previous process left unfinished can never complete; drop them."""
        gone = []
        for d in self.root.glob(f"{_STAGING_PREFIX}*"):
            shutil.rmtree(d, ignore_errors=True)
            gone.append(d.name.removeprefix(_STAGING_PREFIX))
        return gone
