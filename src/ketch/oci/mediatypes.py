"""Media types of OCI and Docker image content (the strings both registries serve).

OCI names come from the image-spec; Docker names from the Docker image manifest v2
schema 2. Layers tagged "nondistributable"/"foreign" must not be pushed to registries
other than the ones in their descriptor's ``urls``.
"""

from __future__ import annotations

from typing import Final

__all__ = [
    "DOCKER_CONFIG",
    "DOCKER_FOREIGN_LAYER",
    "DOCKER_LAYER",
    "DOCKER_LAYER_GZIP",
    "DOCKER_MANIFEST",
    "DOCKER_MANIFEST_LIST",
    "DOCKER_PLUGIN_CONFIG",
    "INDEX_TYPES",
    "LAYER_TYPES",
    "MANIFEST_TYPES",
    "OCI_CONFIG",
    "OCI_DESCRIPTOR",
    "OCI_EMPTY",
    "OCI_INDEX",
    "OCI_LAYER",
    "OCI_LAYER_GZIP",
    "OCI_LAYER_NONDISTRIBUTABLE",
    "OCI_LAYER_NONDISTRIBUTABLE_GZIP",
    "OCI_LAYER_NONDISTRIBUTABLE_ZSTD",
    "OCI_LAYER_ZSTD",
    "OCI_LAYOUT_HEADER",
    "OCI_MANIFEST",
]

# -- OCI image-spec -------------------------------------------------------------------
OCI_DESCRIPTOR: Final = "application/vnd.oci.descriptor.v1+json"
OCI_LAYOUT_HEADER: Final = "application/vnd.oci.layout.header.v1+json"
OCI_INDEX: Final = "application/vnd.oci.image.index.v1+json"
OCI_MANIFEST: Final = "application/vnd.oci.image.manifest.v1+json"
OCI_CONFIG: Final = "application/vnd.oci.image.config.v1+json"
OCI_EMPTY: Final = "application/vnd.oci.empty.v1+json"
OCI_LAYER: Final = "application/vnd.oci.image.layer.v1.tar"
OCI_LAYER_GZIP: Final = "application/vnd.oci.image.layer.v1.tar+gzip"
OCI_LAYER_ZSTD: Final = "application/vnd.oci.image.layer.v1.tar+zstd"
# deprecated by the image-spec, still found in the wild
OCI_LAYER_NONDISTRIBUTABLE: Final = "application/vnd.oci.image.layer.nondistributable.v1.tar"
OCI_LAYER_NONDISTRIBUTABLE_GZIP: Final = (
    "application/vnd.oci.image.layer.nondistributable.v1.tar+gzip"
)
OCI_LAYER_NONDISTRIBUTABLE_ZSTD: Final = (
    "application/vnd.oci.image.layer.nondistributable.v1.tar+zstd"
)

# -- Docker image manifest v2 schema 2 ------------------------------------------------
DOCKER_MANIFEST: Final = "application/vnd.docker.distribution.manifest.v2+json"
DOCKER_MANIFEST_LIST: Final = "application/vnd.docker.distribution.manifest.list.v2+json"
DOCKER_CONFIG: Final = "application/vnd.docker.container.image.v1+json"
DOCKER_PLUGIN_CONFIG: Final = "application/vnd.docker.plugin.v1+json"
DOCKER_LAYER_GZIP: Final = "application/vnd.docker.image.rootfs.diff.tar.gzip"
# uncompressed docker layers: accepted by docker, rarely produced
DOCKER_LAYER: Final = "application/vnd.docker.image.rootfs.diff.tar"
DOCKER_FOREIGN_LAYER: Final = "application/vnd.docker.image.rootfs.foreign.diff.tar.gzip"

# -- groups ---------------------------------------------------------------------------
INDEX_TYPES: Final = frozenset({OCI_INDEX, DOCKER_MANIFEST_LIST})
MANIFEST_TYPES: Final = frozenset({OCI_MANIFEST, DOCKER_MANIFEST})
LAYER_TYPES: Final = frozenset({
    OCI_LAYER, OCI_LAYER_GZIP, OCI_LAYER_ZSTD,
    OCI_LAYER_NONDISTRIBUTABLE, OCI_LAYER_NONDISTRIBUTABLE_GZIP,
    OCI_LAYER_NONDISTRIBUTABLE_ZSTD,
    DOCKER_LAYER, DOCKER_LAYER_GZIP, DOCKER_FOREIGN_LAYER,
})
