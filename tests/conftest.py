"""Shared fixtures: tiny random models (session-scoped folders) and an isolated model store."""

from __future__ import annotations

import pytest

from tests.factories import make_model_folder


@pytest.fixture(autouse=True)
def _isolated_store(tmp_path_factory, monkeypatch):
    """Every test gets its own LLMOPS_HOME unless it asks for the shared default-model store."""
    monkeypatch.setenv("LLMOPS_HOME", str(tmp_path_factory.mktemp("llmops-home")))


@pytest.fixture(scope="session")
def tiny_model(tmp_path_factory):
    """(folder, transformers model) of the tiny 'llama' variant."""
    folder = tmp_path_factory.mktemp("tiny-llama")
    return folder, make_model_folder(folder, "llama")


@pytest.fixture(scope="session")
def tiny_folder(tiny_model):
    return str(tiny_model[0])
