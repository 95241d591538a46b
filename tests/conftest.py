"""Shared fixtures: tiny random models (real models, random weights) built once per session."""

from __future__ import annotations

import os
from pathlib import Path

import pytest
import torch

from kinject.cli import offline_environment

offline_environment()  # the tests run offline, like the `kinject` command
torch.set_num_threads(max(1, min(2, os.cpu_count() or 1)))

REPO = Path(__file__).resolve().parents[1]


@pytest.fixture(scope="session")
def tiny_tokenizer():
    from kinject.tokenizer import BUILTIN_SAMPLE, train_tokenizer

    return train_tokenizer(BUILTIN_SAMPLE * 4, vocab_size=600, min_frequency=1)


@pytest.fixture(scope="session")
def tiny_model_dir(tmp_path_factory, tiny_tokenizer) -> Path:
    from kinject.models import TinySpec, make_tiny_model, save_model

    out = tmp_path_factory.mktemp("models") / "tiny-qwen3"
    model = make_tiny_model(TinySpec(vocab=600, hidden=64, layers=2, heads=4), tokenizer=tiny_tokenizer)
    save_model(model, tiny_tokenizer, out)
    return out


@pytest.fixture
def kinject_logs():
    """The log records kinject emits during a test (INFO and up). Attached to the `kinject`
    logger itself: an in-process `kinject` command may have stopped propagation to the root."""
    import logging

    records: list[logging.LogRecord] = []
    catch = logging.Handler(logging.INFO)
    catch.emit = records.append  # type: ignore[method-assign]
    log = logging.getLogger("kinject")
    level = log.level
    log.addHandler(catch)
    log.setLevel(logging.INFO)
    yield records
    log.removeHandler(catch)
    log.setLevel(level)
