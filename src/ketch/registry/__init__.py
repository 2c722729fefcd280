"""``ketch registry``: an OCI distribution-spec 1.1 registry server.

Pieces, bottom up:

``storage``
    the ``StorageDriver`` seam (a tree of byte files addressed by relative paths) and its
    filesystem and in-memory backends;
``layout``
    where each registry object lives in that tree (the tree is drawn there);
``names``
    repository names, tags and references as the spec defines them;
``errors``
    the OCI error codes, from one table, as exceptions and JSON bodies;
``repository``
    the registry's data model over a driver: blobs, uploads, manifests, tags, referrers;
``gc``
    online garbage collection, and the sweeping protocol that keeps it safe against
    pushes in flight;
``passwords``, ``jwt``, ``auth``
    bcrypt via libcrypt and htpasswd files; RS256 tokens; scopes, access rules, Basic
    and Bearer authorizers and the built-in token server;
``notify``
    webhook notifications on push and delete;
``handlers`` and ``app``
    HTTP ↔ data model, routing, auth, metrics; ``config`` reads the TOML configuration.

The composition root is ``ketch.cmd.registry`` (``ketch registry serve``).
"""

from __future__ import annotations

__all__: list[str] = []
