"""Validators for the OCI JSON schemas in ../shared/specs (their $refs point at siblings)."""

from __future__ import annotations

import json
from functools import cache
from typing import Any

from jsonschema import Draft4Validator
from referencing import Registry, Resource
from referencing.jsonschema import DRAFT4

from tests.conftest import SPECS

RUNTIME_SCHEMAS = SPECS / "oci-runtime-spec"


@cache
def runtime_schema(top: str) -> Draft4Validator:
    """A validator for ``top`` (e.g. "state-schema.json") whose relative $refs resolve."""
    resources = [(p.name, Resource.from_contents(json.loads(p.read_text()),
                                                 default_specification=DRAFT4))
                 for p in RUNTIME_SCHEMAS.glob("*.json")]
    registry: Registry[Any] = Registry().with_resources(resources)
    return Draft4Validator(json.loads((RUNTIME_SCHEMAS / top).read_text()), registry=registry)
