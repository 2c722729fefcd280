"""Thin syscall layer: ctypes wrappers with C semantics.

Each module covers one syscall family, keeps the C prototype in a comment and
raises ``OSError(errno, strerror, "call(args)")`` with the errno the kernel set.
Nothing here knows about containers; ``ketch.runtime`` composes these calls.
"""
