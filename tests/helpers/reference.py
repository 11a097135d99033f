"""Modules of the paper's released code (Richter et al. 2024, ``ssl_in_scg``, MIT), imported from
``../shared/reference/ssl_in_scg`` so tests can check cellssl against them; tests skip where it is absent."""

from __future__ import annotations

import importlib
import sys
from pathlib import Path
from types import ModuleType

import pytest

REFERENCE = Path(__file__).resolve().parents[2].parent / "shared" / "reference" / "ssl_in_scg"


def reference_module(name: str) -> ModuleType:
    """``self_supervision.<name>`` of the reference code (e.g. ``models.contrastive.bt``)."""
    if not (REFERENCE / "self_supervision").is_dir():
        pytest.skip(f"the paper's code is not at {REFERENCE}")
    if str(REFERENCE) not in sys.path:
        sys.path.insert(0, str(REFERENCE))
    return importlib.import_module(f"self_supervision.{name}")
