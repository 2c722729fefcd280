"""What a build step does to the image config, and how the history names the step.

Every step of a classic build makes an image: the parent's config with the step's
change, one more ``history`` entry and, for RUN/COPY/ADD, one more layer. Metadata
instructions (ENV, WORKDIR, USER, EXPOSE, VOLUME, LABEL, CMD, ENTRYPOINT, HEALTHCHECK,
SHELL, STOPSIGNAL, ONBUILD, MAINTAINER) only change the ``config`` section; their
history entry has ``empty_layer: true``, as docker's.

``created_by`` follows dockerd's classic builder, which ``docker history`` shows and
users grep: ``/bin/sh -c #(nop)  ENV A=b`` for metadata, the RUN argv joined by
spaces (prefixed ``|N K=v ...`` when build-args reach it), ``/bin/sh -c #(nop) COPY
file:<hash> in /dest`` for COPY/ADD.
"""

from __future__ import annotations

import copy
import json
import posixpath
import signal
from collections.abc import Mapping, Sequence
from typing import Any

from ketch.errors import InvalidArgument
from ketch.image.build import instructions as ins

__all__ = ["apply_metadata", "nop_created_by", "resolve_workdir", "scratch_config"]


def scratch_config(platform: Mapping[str, str]) -> dict[str, Any]:
    """The config of ``FROM scratch``: no layers, no history, an empty section."""
    return {**platform, "config": {}, "rootfs": {"type": "layers", "diff_ids": []},
            "history": []}


def resolve_workdir(current: str, path: str) -> str:
    """WORKDIR semantics: relative to the previous one, cleaned, always absolute."""
    if not path.startswith("/"):
        path = posixpath.join(current or "/", path)
    out = posixpath.normpath(path)
    return "/" if out == "//" else out


def nop_created_by(shell: Sequence[str], text: str, *, two_spaces: bool = True) -> str:
    """``/bin/sh -c #(nop)  TEXT``: the history of a step that ran nothing."""
    return " ".join(shell) + " #(nop) " + (" " if two_spaces else "") + text


def _command(instr: ins.Cmd | ins.Entrypoint, shell: Sequence[str]) -> list[str]:
    if instr.json:
        return list(instr.command)
    return [*shell, instr.command[0] if instr.command else ""]


def _signal(name: str) -> str:
    text = name.strip()
    if text.isdigit():
        if not 0 < int(text) < 65:
            raise InvalidArgument(f"Invalid signal: {name}")
        return text
    upper = text.upper()
    full = upper if upper.startswith("SIG") else "SIG" + upper
    if full.startswith("SIGRTMIN") or full.startswith("SIGRTMAX") or \
            full in signal.Signals.__members__:
        return text
    raise InvalidArgument(f"Invalid signal: {name}")


def apply_metadata(section: Mapping[str, Any], instr: ins.Instruction, *,
                   shell: Sequence[str], image_env: Sequence[str], cmd_set: bool = False
                   ) -> tuple[dict[str, Any], str]:
    """``(new config section, history text)`` for a metadata instruction (expanded).

    ``image_env`` is the stage's ``Env`` after the instruction (ENV changes it through
    :class:`~ketch.image.build.plan.StageVars`); ``cmd_set`` says whether the stage set
    CMD already (ENTRYPOINT otherwise clears the inherited one, as docker). Raises
    ``InvalidArgument`` for a bad value (a port, a signal); the executor adds the line.
    """
    cfg = copy.deepcopy(dict(section))
    match instr:
        case ins.Env():
            cfg["Env"] = list(image_env)
            text = "ENV " + " ".join(f"{p.key}={p.value}" for p in instr.pairs)
        case ins.Label():
            labels = dict(cfg.get("Labels") or {})
            labels.update((p.key, p.value) for p in instr.pairs)
            cfg["Labels"] = labels
            text = "LABEL " + " ".join(f"{p.key}={p.value}" for p in instr.pairs)
        case ins.Workdir():
            cfg["WorkingDir"] = resolve_workdir(cfg.get("WorkingDir") or "", instr.path)
            return cfg, nop_created_by(shell, f"WORKDIR {cfg['WorkingDir']}",
                                       two_spaces=False)
        case ins.User():
            cfg["User"] = instr.user
            text = f"USER {instr.user}"
        case ins.Expose():
            ports = dict(cfg.get("ExposedPorts") or {})
            new = ins.expose_ports(instr.ports)
            ports.update((p, {}) for p in new)
            cfg["ExposedPorts"] = ports
            text = "EXPOSE " + " ".join(sorted(new))
        case ins.Volume():
            vols = dict(cfg.get("Volumes") or {})
            for p in instr.paths:
                if not p.strip():
                    raise InvalidArgument("VOLUME specified can not be an empty string")
                vols[p] = {}
            cfg["Volumes"] = vols
            text = "VOLUME " + json.dumps(list(instr.paths))
        case ins.Cmd():
            cfg["Cmd"] = _command(instr, shell)
            text = "CMD " + json.dumps(cfg["Cmd"])
        case ins.Entrypoint():
            cfg["Entrypoint"] = _command(instr, shell) if instr.command or not instr.json \
                else None
            if not cmd_set:  # docker: ENTRYPOINT resets a CMD this stage did not set
                cfg["Cmd"] = None
            text = "ENTRYPOINT " + json.dumps(cfg["Entrypoint"] or [])
        case ins.Shell():
            cfg["Shell"] = list(instr.shell)
            text = "SHELL " + json.dumps(list(instr.shell))
        case ins.StopSignal():
            cfg["StopSignal"] = _signal(instr.signal)
            text = f"STOPSIGNAL {instr.signal}"
        case ins.Healthcheck():
            hc: dict[str, Any] = {"Test": list(instr.test)}
            for key, value in (("Interval", instr.interval), ("Timeout", instr.timeout),
                               ("StartPeriod", instr.start_period),
                               ("StartInterval", instr.start_interval),
                               ("Retries", instr.retries)):
                if value:
                    hc[key] = value
            cfg["Healthcheck"] = hc
            text = "HEALTHCHECK " + instr.original.split(None, 1)[-1] \
                if " " in instr.original else "HEALTHCHECK"
        case ins.OnBuild():
            cfg["OnBuild"] = [*(cfg.get("OnBuild") or []), instr.expression]
            text = "ONBUILD " + instr.expression
        case _:
            raise InvalidArgument(f"{instr.keyword} is not a metadata instruction")
    return cfg, nop_created_by(shell, text)
