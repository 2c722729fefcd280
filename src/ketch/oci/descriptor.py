"""Content descriptors: what a manifest or index says about a piece of content it points to.

A ``Descriptor`` is immutable. ``to_json()`` gives the JSON object of the image-spec
(camelCase keys, optional fields left out when empty) and ``Descriptor.from_json()``
validates one: required ``mediaType``/``digest``/``size``, each field's JSON type, media
types shaped ``type/subtype``, and embedded ``data`` matching ``size`` and ``digest``.
As the image-spec requires of readers, properties it does not define are ignored (not an
error), so newer documents still load; misspelled required fields are still caught,
because the field is then missing.
"""

from __future__ import annotations

import base64
import binascii
import re
from collections.abc import Mapping
from dataclasses import dataclass, field
from types import MappingProxyType
from typing import Any

from ketch.errors import InvalidArgument
from ketch.oci.digest import Digest, digest_of

__all__ = ["Descriptor", "Platform"]

_MEDIA_TYPE = re.compile(
    r"[A-Za-z0-9][A-Za-z0-9!#$&^_.+-]{0,126}/[A-Za-z0-9][A-Za-z0-9!#$&^_.+-]{0,126}"
)
_INT64_MAX = 2**63 - 1
_EMPTY: Mapping[str, str] = MappingProxyType({})


def _frozen_map(m: Mapping[str, str]) -> Mapping[str, str]:
    return MappingProxyType(dict(m)) if m else _EMPTY


@dataclass(frozen=True, slots=True)
class Platform:
    """The platform an image in an index runs on (``architecture`` and ``os`` required)."""

    architecture: str
    os: str
    os_version: str | None = None
    os_features: tuple[str, ...] = ()
    variant: str | None = None
    features: tuple[str, ...] = ()

    def to_json(self) -> dict[str, Any]:
        out: dict[str, Any] = {"architecture": self.architecture, "os": self.os}
        if self.os_version is not None:
            out["os.version"] = self.os_version
        if self.os_features:
            out["os.features"] = list(self.os_features)
        if self.variant is not None:
            out["variant"] = self.variant
        if self.features:
            out["features"] = list(self.features)
        return out

    @classmethod
    def from_json(cls, obj: object, where: str = "platform") -> Platform:
        m = _object(obj, where)
        return cls(
            architecture=_str(m, "architecture", where, required=True) or "",
            os=_str(m, "os", where, required=True) or "",
            os_version=_str(m, "os.version", where),
            os_features=_str_list(m, "os.features", where),
            variant=_str(m, "variant", where),
            features=_str_list(m, "features", where),
        )


@dataclass(frozen=True, slots=True)
class Descriptor:
    """Media type, digest and size of some content, plus optional hints.

    ``annotations`` is a read-only mapping (copied on construction), so a descriptor can
    be shared freely. ``data`` is the content itself when embedded in the descriptor.
    """

    media_type: str
    digest: Digest
    size: int
    urls: tuple[str, ...] = ()
    annotations: Mapping[str, str] = field(default_factory=lambda: _EMPTY, hash=False)
    platform: Platform | None = None
    artifact_type: str | None = None
    data: bytes | None = None

    def __post_init__(self) -> None:
        if not _MEDIA_TYPE.fullmatch(self.media_type):
            raise InvalidArgument(f"descriptor mediaType {self.media_type!r}: not type/subtype")
        if self.artifact_type is not None and not _MEDIA_TYPE.fullmatch(self.artifact_type):
            raise InvalidArgument(
                f"descriptor artifactType {self.artifact_type!r}: not type/subtype"
            )
        if isinstance(self.size, bool) or not 0 <= self.size <= _INT64_MAX:
            raise InvalidArgument(f"descriptor size {self.size!r}: want an int64 >= 0")
        if self.data is not None:
            if len(self.data) != self.size:
                raise InvalidArgument(
                    f"descriptor data is {len(self.data)} bytes but size says {self.size}"
                )
            got = digest_of(self.data, self.digest.algorithm)
            if got != self.digest:
                raise InvalidArgument(
                    f"descriptor data: digest mismatch: expected {self.digest}, got {got}"
                )
        object.__setattr__(self, "urls", tuple(self.urls))
        object.__setattr__(self, "annotations", _frozen_map(self.annotations))

    def to_json(self) -> dict[str, Any]:
        """The image-spec JSON object (a fresh dict, ready for ``json.dumps``)."""
        out: dict[str, Any] = {
            "mediaType": self.media_type,
            "digest": str(self.digest),
            "size": self.size,
        }
        if self.urls:
            out["urls"] = list(self.urls)
        if self.annotations:
            out["annotations"] = dict(self.annotations)
        if self.platform is not None:
            out["platform"] = self.platform.to_json()
        if self.artifact_type is not None:
            out["artifactType"] = self.artifact_type
        if self.data is not None:
            out["data"] = base64.b64encode(self.data).decode("ascii")
        return out

    @classmethod
    def from_json(cls, obj: object) -> Descriptor:
        """Validate a decoded JSON object; ``InvalidArgument`` names the bad field."""
        w = "descriptor"
        m = _object(obj, w)
        for key in ("mediaType", "digest", "size"):
            if key not in m:
                raise InvalidArgument(f"{w}: missing required field {key!r}")
        size = m["size"]
        if isinstance(size, bool) or not isinstance(size, int):
            raise InvalidArgument(f"{w} field 'size': want an integer, got {size!r}")
        raw_data = _str(m, "data", w)
        data = None
        if raw_data is not None:
            try:
                data = base64.b64decode(raw_data, validate=True)
            except binascii.Error as e:
                raise InvalidArgument(f"{w} field 'data': invalid base64: {e}") from None
        platform = m.get("platform")
        return cls(
            media_type=_str(m, "mediaType", w, required=True) or "",
            digest=Digest.parse(_str(m, "digest", w, required=True) or ""),
            size=size,
            urls=_str_list(m, "urls", w),
            annotations=_str_map(m, "annotations", w),
            platform=None if platform is None else Platform.from_json(platform, f"{w}.platform"),
            artifact_type=_str(m, "artifactType", w),
            data=data,
        )


# -- JSON field checks ------------------------------------------------------------------

def _object(obj: object, where: str) -> Mapping[str, Any]:
    if not isinstance(obj, Mapping) or not all(isinstance(k, str) for k in obj):
        raise InvalidArgument(f"{where}: want a JSON object, got {type(obj).__name__}")
    return obj


def _str(m: Mapping[str, Any], key: str, where: str, *, required: bool = False) -> str | None:
    v = m.get(key)
    if v is None:
        if required:
            raise InvalidArgument(f"{where}: missing required field {key!r}")
        return None
    if not isinstance(v, str):
        raise InvalidArgument(f"{where} field {key!r}: want a string, got {v!r}")
    return v


def _str_list(m: Mapping[str, Any], key: str, where: str) -> tuple[str, ...]:
    v = m.get(key)
    if v is None:
        return ()
    if not isinstance(v, list) or not all(isinstance(s, str) for s in v):
        raise InvalidArgument(f"{where} field {key!r}: want an array of strings, got {v!r}")
    return tuple(v)


def _str_map(m: Mapping[str, Any], key: str, where: str) -> Mapping[str, str]:
    v = m.get(key)
    if v is None:
        return _EMPTY
    if not isinstance(v, dict) or not all(
        isinstance(k, str) and isinstance(s, str) for k, s in v.items()
    ):
        raise InvalidArgument(f"{where} field {key!r}: want a string-to-string map, got {v!r}")
    return v
