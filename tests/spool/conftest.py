"""Fixtures of the spool's tests."""

from __future__ import annotations

import os

import pytest


@pytest.fixture
def folder(tmp_path: "os.PathLike[str]") -> str:
    return os.path.join(os.fspath(tmp_path), "spool")
