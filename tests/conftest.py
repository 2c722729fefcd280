"""Shared test wiring: the ``root`` tier skips itself when not running as root."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

# The conformance suites live outside test modules: have pytest rewrite their asserts
# too, so a failing comparison shows both sides.
pytest.register_assert_rewrite("tests.conformance")

REPO = Path(__file__).resolve().parent.parent
# ../shared/specs beside the checkout (as on developer machines and in CI)
SPECS = Path(os.environ.get("KETCH_SPECS", REPO.parent / "shared" / "specs"))


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    """tests/integration/ holds root tests; skip those (and any marked root) if not root."""
    skip = pytest.mark.skip(reason="needs root (integration tier)")
    for item in items:
        if f"{os.sep}integration{os.sep}" in str(item.path):
            item.add_marker(pytest.mark.root)
        if os.geteuid() != 0 and "root" in item.keywords:
            item.add_marker(skip)
