"""Images: the image store, unpacking layers into snapshots, diffs and builds.

``layer`` applies one layer changeset (an OCI/Docker tarball) onto a directory.
"""
