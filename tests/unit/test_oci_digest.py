"""Digests, descriptors and media types (``ketch.oci.digest``/``descriptor``/``mediatypes``)."""

from __future__ import annotations

import base64
import hashlib
import json
from typing import Any

import pytest

from ketch.errors import InvalidArgument
from ketch.oci import mediatypes
from ketch.oci.descriptor import Descriptor, Platform
from ketch.oci.digest import Digest, Digester, digest_of

EMPTY_SHA256 = "sha256:e3b0c44298fc1c149afbf4c8996fb92427ae41e4649b934ca495991b7852b855"


# -- Digest -------------------------------------------------------------------------------

def test_parse_and_str_round_trip() -> None:
    d = Digest.parse(EMPTY_SHA256)
    assert d.algorithm == "sha256"
    assert d.hex == EMPTY_SHA256.split(":")[1]
    assert str(d) == EMPTY_SHA256
    assert d == Digest("sha256", d.hex)
    assert {d: 1}[Digest.parse(EMPTY_SHA256)] == 1


def test_parse_sha512() -> None:
    text = "sha512:" + hashlib.sha512(b"x").hexdigest()
    assert str(Digest.parse(text)) == text


@pytest.mark.parametrize(("text", "why"), [
    ("", "want <algorithm>:<hex>"),
    ("sha256", "want <algorithm>:<hex>"),
    ("sha256:", "want <algorithm>:<hex>"),
    (":abc", "want <algorithm>:<hex>"),
    ("md5:" + "0" * 32, "unsupported algorithm 'md5'"),
    ("SHA256:" + "0" * 64, "unsupported algorithm"),
    ("sha256:" + "0" * 63, "64 lowercase hex"),
    ("sha256:" + "0" * 65, "64 lowercase hex"),
    ("sha256:" + "A" * 64, "64 lowercase hex"),
    ("sha256:" + "g" * 64, "64 lowercase hex"),
    ("sha256:" + "0" * 64 + "\n", "64 lowercase hex"),
    ("sha512:" + "0" * 64, "128 lowercase hex"),
])
def test_parse_rejects(text: str, why: str) -> None:
    with pytest.raises(InvalidArgument, match="invalid digest") as e:
        Digest.parse(text)
    assert why in str(e.value)


def test_parse_rejects_non_string() -> None:
    with pytest.raises(InvalidArgument):
        Digest.parse(42)  # type: ignore[arg-type]


def test_digest_of_known_values() -> None:
    assert str(digest_of(b"")) == EMPTY_SHA256
    assert digest_of(b"abc", "sha512").hex == hashlib.sha512(b"abc").hexdigest()
    with pytest.raises(InvalidArgument):
        digest_of(b"", "md5")


def test_digester_is_incremental() -> None:
    data = bytes(range(256)) * 100
    g = Digester()
    assert g.digest() == digest_of(b"")
    for i in range(0, len(data), 777):
        g.update(data[i:i + 777])
    assert g.digest() == digest_of(data)
    g.update(memoryview(b"more"))  # digest() does not end the hash
    assert g.digest() == digest_of(data + b"more")
    assert Digester("sha512").algorithm == "sha512"


# -- Descriptor ---------------------------------------------------------------------------

def full_descriptor_json() -> dict[str, Any]:
    data = b'{"a":1}'
    return {
        "mediaType": mediatypes.OCI_MANIFEST,
        "digest": str(digest_of(data)),
        "size": len(data),
        "urls": ["https://example.com/blob"],
        "annotations": {"org.opencontainers.image.ref.name": "v1"},
        "platform": {"architecture": "arm64", "os": "linux", "variant": "v8",
                     "os.version": "6.1", "os.features": ["f"]},
        "artifactType": "application/vnd.example+type",
        "data": base64.b64encode(data).decode(),
    }


def test_descriptor_round_trip() -> None:
    doc = full_descriptor_json()
    d = Descriptor.from_json(doc)
    assert d.media_type == mediatypes.OCI_MANIFEST
    assert d.platform == Platform("arm64", "linux", os_version="6.1", os_features=("f",),
                                  variant="v8")
    assert d.data == b'{"a":1}'
    assert d.to_json() == doc
    assert Descriptor.from_json(json.loads(json.dumps(d.to_json()))) == d


def test_descriptor_minimal_json_leaves_out_empty_fields() -> None:
    d = Descriptor(mediatypes.OCI_LAYER_GZIP, digest_of(b"x"), 1)
    assert d.to_json() == {"mediaType": mediatypes.OCI_LAYER_GZIP,
                           "digest": str(digest_of(b"x")), "size": 1}


def test_descriptor_is_immutable_and_hashable() -> None:
    src = {"k": "v"}
    d = Descriptor(mediatypes.OCI_CONFIG, digest_of(b"x"), 1, urls=("u",), annotations=src)
    src["k"] = "changed"
    assert d.annotations["k"] == "v"
    with pytest.raises(TypeError):
        d.annotations["k"] = "w"  # type: ignore[index]
    with pytest.raises(AttributeError):
        d.size = 2  # type: ignore[misc]
    assert hash(d) == hash(Descriptor(mediatypes.OCI_CONFIG, digest_of(b"x"), 1, urls=("u",)))


def test_descriptor_ignores_unknown_properties() -> None:
    doc = full_descriptor_json() | {"futureField": {"anything": True}}
    assert Descriptor.from_json(doc) == Descriptor.from_json(full_descriptor_json())


@pytest.mark.parametrize(("change", "why"), [
    ({"mediaType": None}, "missing required field 'mediaType'"),
    ({"digest": None}, "missing required field 'digest'"),
    ({"size": None}, "missing required field 'size'"),
    ({"mediaType": 5}, "'mediaType': want a string"),
    ({"mediaType": "not a media type"}, "not type/subtype"),
    ({"artifactType": "nope"}, "artifactType"),
    ({"digest": "sha256:xyz"}, "invalid digest"),
    ({"size": "7"}, "'size': want an integer"),
    ({"size": True}, "'size': want an integer"),
    ({"size": -1}, "int64 >= 0"),
    ({"size": 2**63}, "int64 >= 0"),
    ({"urls": "https://x"}, "'urls': want an array of strings"),
    ({"urls": [1]}, "'urls': want an array of strings"),
    ({"annotations": {"a": 1}}, "'annotations': want a string-to-string map"),
    ({"annotations": ["a"]}, "'annotations': want a string-to-string map"),
    ({"platform": {"os": "linux"}}, "missing required field 'architecture'"),
    ({"platform": "linux/amd64"}, "descriptor.platform: want a JSON object"),
    ({"platform": {"os": "linux", "architecture": "amd64", "os.features": "x"}},
     "'os.features'"),
    ({"data": "!!!"}, "invalid base64"),
    ({"data": base64.b64encode(b"other").decode()}, "data is 5 bytes but size says 7"),
    ({"data": base64.b64encode(b"1234567").decode()}, "digest mismatch"),
])
def test_descriptor_from_json_rejects(change: dict[str, Any], why: str) -> None:
    doc = full_descriptor_json()
    for k, v in change.items():
        if v is None:
            del doc[k]
        else:
            doc[k] = v
    with pytest.raises(InvalidArgument) as e:
        Descriptor.from_json(doc)
    assert why in str(e.value)


def test_descriptor_from_json_rejects_non_object() -> None:
    with pytest.raises(InvalidArgument, match="want a JSON object"):
        Descriptor.from_json([1, 2])


# -- media types ----------------------------------------------------------------------------

def test_media_types_are_valid_and_grouped() -> None:
    names = [n for n in mediatypes.__all__ if not n.endswith("_TYPES")]
    for name in names:
        Descriptor(getattr(mediatypes, name), digest_of(b""), 0)  # validates the shape
    assert mediatypes.DOCKER_LAYER_GZIP == "application/vnd.docker.image.rootfs.diff.tar.gzip"
    assert mediatypes.OCI_LAYER_ZSTD in mediatypes.LAYER_TYPES
    assert mediatypes.DOCKER_FOREIGN_LAYER in mediatypes.LAYER_TYPES
    assert mediatypes.DOCKER_MANIFEST_LIST in mediatypes.INDEX_TYPES
    assert mediatypes.OCI_MANIFEST in mediatypes.MANIFEST_TYPES
