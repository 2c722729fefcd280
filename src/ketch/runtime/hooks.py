"""OCI hooks: run a hook with the container state on stdin, honouring its timeout.

Which process runs which hook (and so in which namespaces):

    prestart, createRuntime   the create process, after namespaces exist, before pivot_root
    createContainer           the container's init, before pivot_root (host paths)
    startContainer            the container's init, after start, before the user program
    poststart                 the start process, after the user program was started
    poststop                  the delete process, after the container is gone

A failing prestart/createRuntime/createContainer/startContainer hook fails the
operation; a failing poststart/poststop hook is logged and ignored (the spec's rule).
"""

from __future__ import annotations

import json
from collections.abc import Mapping

from ketch.errors import FailedPrecondition

# typing costs ms to import on every container start; annotations are strings here
TYPE_CHECKING = False
if TYPE_CHECKING:
    from typing import Any

__all__ = ["run_hooks"]

def _run_one(hook: Mapping[str, Any], state: bytes) -> None:
    import subprocess  # only paid for when a config has hooks

    path = hook["path"]
    args = list(hook.get("args") or [path])
    env = dict(e.split("=", 1) for e in hook.get("env") or [] if "=" in e)
    timeout = hook.get("timeout")
    try:
        proc = subprocess.run(args, executable=path, input=state, env=env, timeout=timeout,
                              capture_output=True, close_fds=True, check=False)
    except subprocess.TimeoutExpired:
        raise FailedPrecondition(f"hook {path} timed out after {timeout}s") from None
    except OSError as e:
        raise FailedPrecondition(f"hook {path}: {e.strerror}") from None
    if proc.returncode != 0:
        detail = (proc.stderr or proc.stdout).decode(errors="replace").strip().splitlines()
        raise FailedPrecondition(
            f"hook {path} failed with exit status {proc.returncode}"
            + (f": {detail[-1]}" if detail else ""))


def run_hooks(config: Mapping[str, Any], kind: str, state: Mapping[str, Any], *,
              fatal: bool = True) -> None:
    """Run every hook of ``kind`` in order; raise on the first failure when ``fatal``."""
    hooks = (config.get("hooks") or {}).get(kind) or []
    if not hooks:
        return
    payload = json.dumps(state).encode()
    for hook in hooks:
        try:
            _run_one(hook, payload)
        except FailedPrecondition as e:
            if fatal:
                raise
            import logging  # only on this rare path: logging costs ms at import

            logging.getLogger(__name__).warning("%s hook: %s", kind, e)


def has_hooks(config: Mapping[str, Any], *kinds: str) -> bool:
    h = config.get("hooks") or {}
    return any(h.get(k) for k in kinds)

