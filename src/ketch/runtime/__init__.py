"""ketch's OCI runtime: config.json → validated spec → namespaces, mounts, cgroups, exec.

The library entry points are :class:`ketch.runtime.container.Runtime` (in-process,
what ``ketch-runtime`` uses) and the :class:`ketch.runtime.oci_runtime.OCIRuntime`
seam that the engine drives, which runc and crun also fit.
"""
