"""Composition root of ``ketch``, the CLI: pick the engine, build its client, run the verb.

Wiring only. ``ketch registry …`` goes to ``ketch.cmd.registry`` before any engine
client is built. ``-H``/``--host`` is taken from the options before the verb (so a
``-H`` in a container's command line is left alone); without it $KETCH_HOST,
$DOCKER_HOST or ``unix:///run/ketch.sock``.
"""

from __future__ import annotations

import sys
from collections.abc import Sequence

from ketch.client.cli import split_host

__all__ = ["main", "split_host"]


def main(argv: Sequence[str] | None = None) -> None:
    from ketch.client.cli import host_from_env
    from ketch.client.cli import main as cli_main
    from ketch.client.remote import RemoteEngineClient

    host, rest = split_host(sys.argv[1:] if argv is None else argv)
    if rest[:1] == ["registry"]:  # the registry server needs no engine
        from ketch.cmd.registry import main as registry_main

        sys.exit(registry_main(rest[1:]))
    client = RemoteEngineClient(host or host_from_env())
    sys.exit(cli_main(rest, client))


if __name__ == "__main__":
    main()
