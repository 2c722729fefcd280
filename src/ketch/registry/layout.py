"""Where each registry object lives in the ``StorageDriver`` tree.

::

    blobs/
      <alg>/<hex[:2]>/<hex>/data            the bytes of every blob and manifest, once,
                                            shared by all repositories
      <alg>/<hex[:2]>/<hex>/sweeping        present while GC is deciding whether to delete
                                            the blob (JSON: run id, time); see ``gc``
    repositories/
      <name…>/                              one directory per name component
        _layers/<alg>/<hex>/link            "this repository may serve blob <alg>:<hex>"
                                            (content: the digest)
        _manifests/
          revisions/<alg>/<hex>/link        a manifest of this repository; content: its
                                            descriptor JSON (mediaType, digest, size,
                                            artifactType, annotations)
          revisions/<alg>/<hex>/sweeping    GC is deciding whether to remove it (untagged)
          tags/<tag>/link                   tag → manifest digest
        _referrers/<alg>/<hex>/             manifests whose ``subject`` is <alg>:<hex>:
          <ralg>/<rhex>/link                the referrer's descriptor JSON
        _uploads/<id>/
          data                              bytes received so far (appended per chunk)
          startedat                         RFC 3339 time the upload began

Repository name components start with ``[a-z0-9]``, so ``_layers`` & co. never clash
with a nested repository (``a`` and ``a/b`` can both exist). A blob is *in* a repository
when its ``_layers`` link (or, for a manifest, its revision link) exists; the shared
``data`` file is removed only by garbage collection. Deleting a tag removes only its
``tags/<tag>`` directory.

A ``sweeping`` file is garbage collection's *intent to delete*, written before GC
re-checks whether anything still references the object; a manifest PUT writes its own
intent (revision link, tag) before it re-checks the objects it references and waits while
a ``sweeping`` file is fresh. The protocol, and why one of the two always sees the other,
is in ``ketch.registry.gc``.
"""

from __future__ import annotations

from ketch.oci.digest import Digest

__all__ = [
    "BLOBS",
    "REPOSITORIES",
    "SWEEPING",
    "blob_data",
    "blob_dir",
    "blob_sweeping",
    "layer_link",
    "layers_dir",
    "manifests_dir",
    "referrer_link",
    "referrers_dir",
    "repo_dir",
    "revision_dir",
    "revision_link",
    "revision_sweeping",
    "revisions_dir",
    "tag_dir",
    "tag_link",
    "tags_dir",
    "upload_data",
    "upload_dir",
    "upload_started",
    "uploads_dir",
]

BLOBS = "blobs"
REPOSITORIES = "repositories"
SWEEPING = "sweeping"


def blob_dir(d: Digest) -> str:
    return f"{BLOBS}/{d.algorithm}/{d.hex[:2]}/{d.hex}"


def blob_data(d: Digest) -> str:
    return f"{blob_dir(d)}/data"


def blob_sweeping(d: Digest) -> str:
    return f"{blob_dir(d)}/{SWEEPING}"


def repo_dir(name: str) -> str:
    return f"{REPOSITORIES}/{name}"


def layers_dir(name: str) -> str:
    return f"{repo_dir(name)}/_layers"


def layer_link(name: str, d: Digest) -> str:
    return f"{layers_dir(name)}/{d.algorithm}/{d.hex}/link"


def manifests_dir(name: str) -> str:
    return f"{repo_dir(name)}/_manifests"


def revisions_dir(name: str) -> str:
    return f"{manifests_dir(name)}/revisions"


def revision_dir(name: str, d: Digest) -> str:
    return f"{revisions_dir(name)}/{d.algorithm}/{d.hex}"


def revision_link(name: str, d: Digest) -> str:
    return f"{revision_dir(name, d)}/link"


def revision_sweeping(name: str, d: Digest) -> str:
    return f"{revision_dir(name, d)}/{SWEEPING}"


def tags_dir(name: str) -> str:
    return f"{manifests_dir(name)}/tags"


def tag_dir(name: str, tag: str) -> str:
    return f"{tags_dir(name)}/{tag}"


def tag_link(name: str, tag: str) -> str:
    return f"{tag_dir(name, tag)}/link"


def referrers_dir(name: str, subject: Digest) -> str:
    return f"{repo_dir(name)}/_referrers/{subject.algorithm}/{subject.hex}"


def referrer_link(name: str, subject: Digest, referrer: Digest) -> str:
    return f"{referrers_dir(name, subject)}/{referrer.algorithm}/{referrer.hex}/link"


def uploads_dir(name: str) -> str:
    return f"{repo_dir(name)}/_uploads"


def upload_dir(name: str, upload_id: str) -> str:
    return f"{uploads_dir(name)}/{upload_id}"


def upload_data(name: str, upload_id: str) -> str:
    return f"{upload_dir(name, upload_id)}/data"


def upload_started(name: str, upload_id: str) -> str:
    return f"{upload_dir(name, upload_id)}/startedat"
