"""Composition root of ``ketch``, the CLI: pick the engine, build its client, run the verb.

Wiring only. ``ketch registry …`` goes to ``ketch.cmd.registry`` before any engine
client is built. ``-H``/``--host`` is taken from the options before the verb (so a
``-H`` in a container's command line is left alone); without it $KETCH_HOST,
$DOCKER_HOST or ``unix:///run/ketch.sock``.
"""

from __future__ import annotations

import sys
from collections.abc import Sequence

__all__ = ["main", "split_host"]


def split_host(argv: Sequence[str]) -> tuple[str | None, list[str]]:
    """``-H URL`` / ``--host URL`` / ``--host=URL`` before the verb → (URL, the rest)."""
    rest: list[str] = []
    host: str | None = None
    i = 0
    while i < len(argv):
        arg = argv[i]
        if not arg.startswith("-"):
            return host, rest + list(argv[i:])
        if arg in ("-H", "--host") and i + 1 < len(argv):
            host, i = argv[i + 1], i + 2
            continue
        if arg.startswith("--host="):
            host = arg.split("=", 1)[1]
        elif arg.startswith("-H") and len(arg) > 2:
            host = arg[2:].lstrip("=")
        else:
            rest.append(arg)
        i += 1
    return host, rest


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
