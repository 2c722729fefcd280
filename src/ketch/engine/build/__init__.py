"""The build executor: ``docker build`` (the classic builder API) inside the engine.

The front end (:mod:`ketch.image.build`: parser, planner, expansion, context) decides
*what* to build; this package does it:

``executor``  :class:`Builder` — stages in parallel, steps, the progress stream
``intake``    the context tar in: whole (docker clients) or synced against a kept tree
``contexts``  the kept context trees of ``ketch build`` (``<data-root>/build/contexts``)
``cache``     step keys → step images, persisted in ``<data-root>/build``
``config``    metadata instructions → image config, history texts
``run``       RUN in a real container through the container service
``files``     COPY/ADD written straight into a layer snapshot, no container

See ``docs/build.md`` for the design.
"""

from __future__ import annotations

from ketch.engine.build.executor import Builder, BuildOptions, Emit

__all__ = ["BuildOptions", "Builder", "Emit"]
