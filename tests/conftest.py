"""Shared fixtures: the shipped reference tokenizer and generator (no skips: missing weights must fail)."""

from __future__ import annotations

import pytest
import torch


@pytest.fixture(scope="session")
def tok():
    from guard.models import load_tokenizer

    torch.set_num_threads(1)
    return load_tokenizer("reference")


@pytest.fixture(scope="session")
def gen():
    from guard.models import load

    torch.set_num_threads(1)
    return load("reference")
