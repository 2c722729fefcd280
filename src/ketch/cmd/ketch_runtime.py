"""Composition root of ``ketch-runtime`` (runc-compatible CLI)."""

from __future__ import annotations

import sys


def main() -> None:
    from ketch.runtime.cli import main as run

    sys.exit(run())


if __name__ == "__main__":
    main()
