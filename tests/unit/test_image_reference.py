"""Image references: Docker's grammar, normalisation and error wording."""

from __future__ import annotations

import pytest

from ketch.errors import InvalidArgument
from ketch.image.reference import is_image_id, normalize, parse

HEX = "a" * 64


@pytest.mark.parametrize(("text", "full"), [
    ("busybox", "docker.io/library/busybox:latest"),
    ("busybox:1.36", "docker.io/library/busybox:1.36"),
    ("library/busybox", "docker.io/library/busybox:latest"),
    ("docker.io/busybox", "docker.io/library/busybox:latest"),
    ("index.docker.io/library/busybox:x", "docker.io/library/busybox:x"),
    ("me/app", "docker.io/me/app:latest"),
    ("me/team/app:v1.2_rc-3", "docker.io/me/team/app:v1.2_rc-3"),
    ("localhost/app", "localhost/app:latest"),
    ("localhost:5000/a/b:tag", "localhost:5000/a/b:tag"),
    ("registry.example.com/x", "registry.example.com/x:latest"),
    ("quay.io:443/org/my-app__x.y", "quay.io:443/org/my-app__x.y:latest"),
    ("[::1]:5000/app:1", "[::1]:5000/app:1"),
    (f"busybox@sha256:{HEX}", f"docker.io/library/busybox@sha256:{HEX}"),
    (f"busybox:1@sha256:{HEX}", f"docker.io/library/busybox:1@sha256:{HEX}"),
    ("localhost:5000", "docker.io/library/localhost:5000"),  # name "localhost", tag 5000
])
def test_normalize(text: str, full: str) -> None:
    assert str(normalize(text)) == full
    assert str(normalize(normalize(text))) == full


@pytest.mark.parametrize(("text", "short"), [
    ("busybox", "busybox:latest"),
    ("me/app:1", "me/app:1"),
    ("localhost:5000/a:b", "localhost:5000/a:b"),
    (f"busybox@sha256:{HEX}", f"busybox@sha256:{HEX}"),
])
def test_familiar(text: str, short: str) -> None:
    assert normalize(text).familiar() == short


def test_parse_keeps_what_was_written() -> None:
    r = parse("localhost:5000/a/b:t")
    assert (r.domain, r.path, r.tag, r.digest) == ("localhost:5000", "a/b", "t", None)
    r = parse("busybox")
    assert (r.domain, r.path, r.tag) == ("", "busybox", None)
    assert r.name == "busybox"
    assert normalize("busybox").name == "docker.io/library/busybox"


@pytest.mark.parametrize("text", [
    "", ":tag", "busybox:", "busy box", "a//b", "-a", "a-", "a:b:c", "busybox@sha256:abc",
    "busybox@sha256:" + "Z" * 64, "a/b/", "/a", "busybox:" + "t" * 129, "a@b",
    "example.com:port/x", "a" * 256,
])
def test_invalid(text: str) -> None:
    with pytest.raises(InvalidArgument, match=r"^invalid reference format"):
        normalize(text)


def test_uppercase_says_lowercase() -> None:
    with pytest.raises(InvalidArgument,
                       match=r"invalid reference format: repository name \(me/App\) must be "
                             r"lowercase"):
        normalize("me/App")
    # an uppercase first component is taken as a host name, as Docker does
    assert str(normalize("Example/app")) == "Example/app:latest"


def test_hex_id_is_not_a_name() -> None:
    assert is_image_id(HEX)
    assert not is_image_id(HEX[:12])
    with pytest.raises(InvalidArgument, match="64-byte hexadecimal"):
        normalize(HEX)
    assert str(normalize(HEX[:12])) == f"docker.io/library/{HEX[:12]}:latest"
