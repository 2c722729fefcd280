"""Content digests: ``<algorithm>:<encoded>`` as the OCI image-spec defines them.

A ``Digest`` names content by a cryptographic hash of its bytes. ketch accepts the two
algorithms the image-spec registers, each with lowercase hex of a fixed length:

=========  =========
algorithm  hex chars
=========  =========
sha256     64
sha512     128
=========  =========

``Digest.parse`` rejects anything else with ``InvalidArgument`` whose message quotes the
input, so a bad digest in a manifest or an API path is reported as what it is.
"""

from __future__ import annotations

import hashlib
import re
from dataclasses import dataclass
from typing import Final

from ketch.errors import InvalidArgument

__all__ = ["ALGORITHMS", "CANONICAL", "Digest", "Digester", "digest_of"]

#: registered algorithm -> length of its hex encoding
ALGORITHMS: Final[dict[str, int]] = {"sha256": 64, "sha512": 128}
#: the algorithm ketch uses when it computes a digest itself
CANONICAL: Final = "sha256"

_HEX = re.compile(r"[0-9a-f]+")


@dataclass(frozen=True, slots=True)
class Digest:
    """A validated digest; ``str(d)`` is its wire form ``sha256:<64 hex>``.

    Construct with ``Digest.parse(text)`` or ``Digest(algorithm, hex)``; both validate.
    Digests compare and hash by value, so they are fine as dict keys.
    """

    algorithm: str
    hex: str

    def __post_init__(self) -> None:
        want = ALGORITHMS.get(self.algorithm)
        if want is None:
            raise InvalidArgument(
                f"invalid digest {self.algorithm}:{self.hex}: unsupported algorithm "
                f"{self.algorithm!r} (want one of {', '.join(ALGORITHMS)})"
            )
        if len(self.hex) != want or not _HEX.fullmatch(self.hex):
            raise InvalidArgument(
                f"invalid digest {self.algorithm}:{self.hex}: {self.algorithm} needs "
                f"{want} lowercase hex characters"
            )

    @classmethod
    def parse(cls, text: str) -> Digest:
        """Parse ``algorithm:hex``; ``InvalidArgument`` if malformed or unsupported."""
        if not isinstance(text, str):
            raise InvalidArgument(f"invalid digest {text!r}: not a string")
        alg, sep, enc = text.partition(":")
        if not sep or not alg or not enc:
            raise InvalidArgument(f"invalid digest {text!r}: want <algorithm>:<hex>")
        return cls(alg, enc)

    def __str__(self) -> str:
        return f"{self.algorithm}:{self.hex}"


def digest_of(data: bytes, algorithm: str = CANONICAL) -> Digest:
    """The digest of ``data`` (sha256 unless ``algorithm`` says otherwise)."""
    d = Digester(algorithm)
    d.update(data)
    return d.digest()


class Digester:
    """Incremental digest: ``update()`` any number of times, ``digest()`` at any point.

    ``digest()`` does not finish the hash; more ``update()`` calls may follow it.
    """

    __slots__ = ("_algorithm", "_hash")

    def __init__(self, algorithm: str = CANONICAL) -> None:
        if algorithm not in ALGORITHMS:
            raise InvalidArgument(f"unsupported digest algorithm {algorithm!r}")
        self._algorithm = algorithm
        self._hash = hashlib.new(algorithm)

    @property
    def algorithm(self) -> str:
        return self._algorithm

    def update(self, data: bytes | bytearray | memoryview) -> None:
        self._hash.update(data)

    def digest(self) -> Digest:
        return Digest(self._algorithm, self._hash.hexdigest())
