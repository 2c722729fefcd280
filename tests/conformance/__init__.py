"""Conformance suites: one per Protocol seam, run against every implementation of it.

A suite is a base class of ``test_*`` methods that only touch the Protocol. A test
module subclasses it (``class TestX(Suite): ...``) and provides the fixtures the
suite names; each implementation is one parameter of those fixtures.
"""
