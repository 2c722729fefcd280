"""The builder's front end: Dockerfile → instructions → a plan of stages.

Everything here is pure (no engine, no root, no containers); the executor in the
engine layer consumes it. The pipeline, each step its own module:

``parser``        Dockerfile text → :class:`~ketch.image.build.parser.Dockerfile`
                  (directives + typed records of :mod:`~ketch.image.build.instructions`)
``plan``          records → stages, global ARGs, ``--target``, the stage graph and the
                  levels that can build in parallel
``expand``        the builder's ``$VAR`` substitution, applied per instruction with the
                  stage's variables at that line
``dockerignore``  ``.dockerignore`` patterns (what the context leaves out)
``context``       the build context (a directory or a tar stream) as a safe view: COPY
                  sources resolved and content-hashed for the layer cache

Every error about the Dockerfile is a ``DockerfileError`` (an ``InvalidArgument``)
whose message names the line. ``docs/build.md`` describes the design.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from ketch.image.build.instructions import DockerfileError
    from ketch.image.build.parser import Dockerfile, parse

__all__ = ["Dockerfile", "DockerfileError", "parse"]


def __getattr__(name: str) -> Any:
    """The package's names, imported at first use: a client that needs only
    ``dockerignore`` (``ketch build``) does not pay for the parser's ~25 ms of imports."""
    if name == "DockerfileError":
        from ketch.image.build.instructions import DockerfileError

        return DockerfileError
    if name in ("Dockerfile", "parse"):
        from ketch.image.build import parser

        return getattr(parser, name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
