"""RS256 JSON Web Tokens for the Docker token flow, with RSA in pure Python.

Why RS256: in Docker's flow the token server signs and the registry verifies, and the
registry is configured with a *public* key or certificate (Distribution's
``rootcertbundle``), so the verifying side never holds a secret — HS256 would make every
registry able to mint tokens. ES256 would need elliptic-curve arithmetic and a careful
nonce; RSA PKCS#1 v1.5 signatures are deterministic and their verification is one
``pow``. Signing uses the CRT (about 2 ms for a 2048-bit key) and is checked by
verifying the result before it leaves (a fault must not leak the key).

Keys are read from PEM: ``RSA PRIVATE KEY`` (PKCS#1), ``PRIVATE KEY`` (PKCS#8, what
``openssl genpkey -algorithm RSA`` writes), ``PUBLIC KEY`` (SubjectPublicKeyInfo),
``RSA PUBLIC KEY`` and ``CERTIFICATE`` (the subject key of an X.509 certificate; the
certificate's own signature and validity are not checked — configuring the file is
the trust decision). Encrypted keys are refused.

Tokens carry ``kid``: the RFC 7638 JWK thumbprint of the signing key, so a verifier
holding several keys picks the right one. ``decode`` accepts only ``alg: RS256`` (never
``none`` or HMAC, whatever the header says), then checks the signature, ``exp``/``nbf``
(with leeway), ``iss`` and ``aud``.
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import hmac
import json
import re
import time
from collections.abc import Iterable
from dataclasses import dataclass
from typing import Any

from ketch.errors import InvalidArgument

__all__ = ["RSAPrivateKey", "RSAPublicKey", "TokenInvalid", "b64url", "decode", "encode",
           "load_private_key", "load_public_keys", "unb64url"]

# DigestInfo DER prefix for SHA-256 (RFC 8017, section 9.2, note 1)
_SHA256_PREFIX = bytes.fromhex("3031300d060960864801650304020105000420")
_RSA_OID = bytes.fromhex("2a864886f70d010101")  # 1.2.840.113549.1.1.1 rsaEncryption
_PEM = re.compile(rb"-----BEGIN ([A-Z0-9 ]+)-----(.*?)-----END \1-----", re.S)


class TokenInvalid(Exception):
    """A token that does not verify; the message says why (for logs, not clients)."""


def b64url(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode()


def unb64url(text: str) -> bytes:
    try:
        return base64.urlsafe_b64decode(text + "=" * (-len(text) % 4))
    except (binascii.Error, ValueError) as e:
        raise TokenInvalid(f"bad base64url: {e}") from None


def _int_bytes(n: int, length: int | None = None) -> bytes:
    return n.to_bytes(length or max(1, (n.bit_length() + 7) // 8), "big")


# -- a little DER ----------------------------------------------------------------------


def _der(data: bytes, pos: int = 0) -> tuple[int, bytes, int]:
    """(tag, contents, position after) of the DER element at ``pos``."""
    try:
        tag = data[pos]
        length = data[pos + 1]
        pos += 2
        if length & 0x80:
            count = length & 0x7F
            if count == 0 or count > 4:
                raise InvalidArgument("DER: unsupported length")
            length = int.from_bytes(data[pos:pos + count], "big")
            pos += count
    except IndexError:
        raise InvalidArgument("DER: truncated") from None
    end = pos + length
    if end > len(data):
        raise InvalidArgument("DER: truncated")
    return tag, data[pos:end], end


def _seq(data: bytes) -> list[tuple[int, bytes]]:
    """The elements of a DER SEQUENCE's contents."""
    out: list[tuple[int, bytes]] = []
    pos = 0
    while pos < len(data):
        tag, value, pos = _der(data, pos)
        out.append((tag, value))
    return out


def _ints(items: list[tuple[int, bytes]]) -> list[int]:
    return [int.from_bytes(v, "big") for t, v in items if t == 0x02]


# -- keys ------------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class RSAPublicKey:
    n: int
    e: int

    @property
    def size(self) -> int:
        return (self.n.bit_length() + 7) // 8

    @property
    def kid(self) -> str:
        """The RFC 7638 thumbprint (SHA-256 of the canonical JWK), base64url."""
        jwk = json.dumps({"e": b64url(_int_bytes(self.e)), "kty": "RSA",
                          "n": b64url(_int_bytes(self.n))}, separators=(",", ":"))
        return b64url(hashlib.sha256(jwk.encode()).digest())

    def verify(self, message: bytes, signature: bytes) -> bool:
        """RSASSA-PKCS1-v1_5 with SHA-256."""
        if len(signature) != self.size:
            return False
        s = int.from_bytes(signature, "big")
        if s >= self.n:
            return False
        em = _int_bytes(pow(s, self.e, self.n), self.size)
        return hmac.compare_digest(em, _encode_pkcs1(message, self.size))


@dataclass(frozen=True, slots=True)
class RSAPrivateKey:
    n: int
    e: int
    d: int
    p: int
    q: int
    dp: int
    dq: int
    qinv: int

    @property
    def public(self) -> RSAPublicKey:
        return RSAPublicKey(self.n, self.e)

    def sign(self, message: bytes) -> bytes:
        """RSASSA-PKCS1-v1_5 with SHA-256 (CRT), verified before it is returned."""
        size = (self.n.bit_length() + 7) // 8
        m = int.from_bytes(_encode_pkcs1(message, size), "big")
        s1, s2 = pow(m, self.dp, self.p), pow(m, self.dq, self.q)
        s = s2 + self.q * ((self.qinv * (s1 - s2)) % self.p)
        sig = _int_bytes(s, size)
        if not self.public.verify(message, sig):
            raise RuntimeError("RSA signature failed its own check")
        return sig


def _encode_pkcs1(message: bytes, size: int) -> bytes:
    t = _SHA256_PREFIX + hashlib.sha256(message).digest()
    if size < len(t) + 11:
        raise InvalidArgument("RSA key too small")
    return b"\x00\x01" + b"\xff" * (size - len(t) - 3) + b"\x00" + t


def _pem_blocks(pem: bytes) -> list[tuple[str, bytes]]:
    out = []
    for m in _PEM.finditer(pem):
        body = b"".join(line.strip() for line in m.group(2).splitlines()
                        if b":" not in line)  # skip Proc-Type / DEK-Info headers
        try:
            out.append((m.group(1).decode(), base64.b64decode(body, validate=True)))
        except (binascii.Error, ValueError):
            raise InvalidArgument(f"PEM block {m.group(1).decode()!r} is not base64") from None
    return out


def _pkcs1_private(der: bytes) -> RSAPrivateKey:
    tag, body, _ = _der(der)
    nums = _ints(_seq(body))
    if tag != 0x30 or len(nums) < 9:
        raise InvalidArgument("not an RSA private key")
    _, n, e, d, p, q, dp, dq, qinv = nums[:9]
    key = RSAPrivateKey(n, e, d, p, q, dp, dq, qinv)
    if p * q != n or n.bit_length() < 2048:
        raise InvalidArgument("RSA private key inconsistent or shorter than 2048 bits")
    return key


def _spki_public(der: bytes) -> RSAPublicKey:
    """SubjectPublicKeyInfo → the RSA key inside."""
    _, body, _ = _der(der)
    items = _seq(body)
    if len(items) != 2 or items[0][0] != 0x30 or items[1][0] != 0x03:
        raise InvalidArgument("not a SubjectPublicKeyInfo")
    alg = _seq(items[0][1])
    if not alg or alg[0] != (0x06, _RSA_OID):
        raise InvalidArgument("not an RSA public key (only RSA keys are supported)")
    return _pkcs1_public(items[1][1][1:])  # BIT STRING: skip the unused-bits byte


def _pkcs1_public(der: bytes) -> RSAPublicKey:
    _, body, _ = _der(der)
    nums = _ints(_seq(body))
    if len(nums) != 2:
        raise InvalidArgument("not an RSA public key")
    return RSAPublicKey(nums[0], nums[1])


def _certificate_public(der: bytes) -> RSAPublicKey:
    _, cert, _ = _der(der)
    _, tbs, _ = _der(cert)  # tbsCertificate
    fields = []
    pos = 0
    while pos < len(tbs):
        tag, _, end = _der(tbs, pos)
        fields.append((tag, tbs[pos:end]))
        pos = end
    if fields and fields[0][0] == 0xA0:  # [0] version
        fields = fields[1:]
    if len(fields) < 6:
        raise InvalidArgument("malformed certificate")
    # serialNumber, signature, issuer, validity, subject, subjectPublicKeyInfo
    return _spki_public(fields[5][1])


def load_private_key(pem: bytes) -> RSAPrivateKey:
    """The first RSA private key in ``pem`` (PKCS#1 or unencrypted PKCS#8)."""
    for kind, der in _pem_blocks(pem):
        if kind == "RSA PRIVATE KEY":
            return _pkcs1_private(der)
        if kind == "PRIVATE KEY":
            _, body, _ = _der(der)
            items = _seq(body)
            if len(items) < 3 or _seq(items[1][1])[:1] != [(0x06, _RSA_OID)]:
                raise InvalidArgument("not an RSA private key (only RSA keys are supported)")
            return _pkcs1_private(items[2][1])
        if kind == "ENCRYPTED PRIVATE KEY":
            raise InvalidArgument("encrypted private keys are not supported; "
                                  "write it unencrypted (openssl pkey -in K -out K2)")
    raise InvalidArgument("no RSA private key found in the PEM data")


def load_public_keys(pem: bytes) -> list[RSAPublicKey]:
    """Every RSA public key in ``pem``: public keys, certificates, or the public half
    of private keys."""
    keys: list[RSAPublicKey] = []
    for kind, der in _pem_blocks(pem):
        if kind == "PUBLIC KEY":
            keys.append(_spki_public(der))
        elif kind == "RSA PUBLIC KEY":
            keys.append(_pkcs1_public(der))
        elif kind == "CERTIFICATE":
            keys.append(_certificate_public(der))
        elif kind in ("RSA PRIVATE KEY", "PRIVATE KEY"):
            keys.append(load_private_key(pem).public)
    if not keys:
        raise InvalidArgument("no RSA public key or certificate found in the PEM data")
    return keys


# -- tokens ----------------------------------------------------------------------------


def encode(claims: dict[str, Any], key: RSAPrivateKey) -> str:
    """A compact JWS (RS256) of ``claims``."""
    header = {"typ": "JWT", "alg": "RS256", "kid": key.public.kid}
    signing_input = (b64url(json.dumps(header, separators=(",", ":")).encode()) + "." +
                     b64url(json.dumps(claims, separators=(",", ":")).encode()))
    return signing_input + "." + b64url(key.sign(signing_input.encode()))


def decode(token: str, keys: Iterable[RSAPublicKey], *, issuer: str, audience: str,
           now: float | None = None, leeway: float = 60.0) -> dict[str, Any]:
    """The claims of ``token`` once it verifies; ``TokenInvalid`` saying why not."""
    parts = token.split(".")
    if len(parts) != 3:
        raise TokenInvalid("not a compact JWS")
    try:
        header = json.loads(unb64url(parts[0]))
        claims = json.loads(unb64url(parts[1]))
    except ValueError:
        raise TokenInvalid("header or claims are not JSON") from None
    if not isinstance(header, dict) or not isinstance(claims, dict):
        raise TokenInvalid("header or claims are not objects")
    if header.get("alg") != "RS256":
        raise TokenInvalid(f"algorithm {header.get('alg')!r} not accepted (RS256 only)")
    candidates = list(keys)
    kid = header.get("kid")
    if isinstance(kid, str):
        candidates = [k for k in candidates if k.kid == kid] or candidates
    message, sig = (parts[0] + "." + parts[1]).encode(), unb64url(parts[2])
    if not any(k.verify(message, sig) for k in candidates):
        raise TokenInvalid("signature does not verify with any trusted key")
    t = time.time() if now is None else now
    exp, nbf = claims.get("exp"), claims.get("nbf")
    if not isinstance(exp, int | float) or isinstance(exp, bool):
        raise TokenInvalid("no exp claim")
    if t > exp + leeway:
        raise TokenInvalid("token expired")
    if isinstance(nbf, int | float) and t + leeway < nbf:
        raise TokenInvalid("token not yet valid")
    if claims.get("iss") != issuer:
        raise TokenInvalid(f"issuer {claims.get('iss')!r} is not {issuer!r}")
    aud = claims.get("aud")
    auds = aud if isinstance(aud, list) else [aud]
    if audience not in auds:
        raise TokenInvalid(f"audience {aud!r} does not include {audience!r}")
    return claims
