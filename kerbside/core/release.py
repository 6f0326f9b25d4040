"""Signed firmware releases: the host's half of knode.ota (docs/security.md "Firmware updates").

A release is the firmware package (/lib/knode/...) plus a manifest listing each
file's path, size and SHA-256, signed with the city's release key: ECDSA P-256
over SHA-256(knode.ota_receive.CONTEXT + manifest), as r || s with s normalised to the
low half (the node refuses the high-S twin, so a signature has one encoding).

The format constants and the acceptance check are the node's own (knode.ota_receive),
imported rather than restated: `verify` runs exactly the code a node runs, so a
release that passes here is one a node accepts. Signing uses `cryptography`.

The release file (*.kota) is CBOR {"v": 1, "manifest": bstr, "sig": bstr,
"files": [bstr, ...]} with files in manifest order.
"""

from __future__ import annotations

import hashlib
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.hazmat.primitives.asymmetric.utils import decode_dss_signature, encode_dss_signature

from kerbside.core.errors import ProvisioningError
from knode import cbor, ota_receive, p256

CONTEXT = ota_receive.CONTEXT
PACKAGE = ota_receive.PACKAGE
MAX_CHUNK = ota_receive.MAX_CHUNK
NODE_KEY_PATH = ota_receive.KEY
"""Where a node keeps the release public key (65 bytes, uncompressed SEC1), written by provisioning."""


class ReleaseError(ProvisioningError, ValueError):
    """A release key, release file or update push that cannot be used; the message says what to do."""


# --- keys ----------------------------------------------------------------------------------------


def new_key() -> ec.EllipticCurvePrivateKey:
    return ec.generate_private_key(ec.SECP256R1())


def private_pem(key: ec.EllipticCurvePrivateKey, passphrase: bytes | None) -> bytes:
    enc: serialization.KeySerializationEncryption = (
        serialization.BestAvailableEncryption(passphrase) if passphrase else serialization.NoEncryption())
    return key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, enc)


def public_pem(key: ec.EllipticCurvePrivateKey) -> bytes:
    return key.public_key().public_bytes(serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo)


def load_private(path: Path, passphrase: bytes | None) -> ec.EllipticCurvePrivateKey:
    try:
        data = path.read_bytes()
    except OSError as e:
        raise ReleaseError(f"cannot read the release key {path}: {e.strerror or e}") from e
    try:
        key = serialization.load_pem_private_key(data, passphrase or None)
    except TypeError as e:  # encrypted but no passphrase, or a passphrase for a plain key
        raise ReleaseError(f"{path}: {e} (give the passphrase it was created with)") from e
    except ValueError as e:
        raise ReleaseError(f"{path}: not a PEM private key, or the passphrase is wrong") from e
    if not isinstance(key, ec.EllipticCurvePrivateKey) or not isinstance(key.curve, ec.SECP256R1):
        raise ReleaseError(f"{path}: a release key is ECDSA P-256 (kerbside release keygen makes one)")
    return key


def node_key(path: Path) -> bytes:
    """The 65 bytes a node keeps in /release.pub, from a PEM public key (or those 65 bytes themselves)."""
    try:
        data = path.read_bytes()
    except OSError as e:
        raise ReleaseError(f"cannot read the release public key {path}: {e.strerror or e}") from e
    if data.startswith(b"-----BEGIN"):
        try:
            pub = serialization.load_pem_public_key(data)
        except ValueError as e:
            raise ReleaseError(f"{path}: not a PEM public key") from e
        if not isinstance(pub, ec.EllipticCurvePublicKey) or not isinstance(pub.curve, ec.SECP256R1):
            raise ReleaseError(f"{path}: a release key is ECDSA P-256")
        data = pub.public_bytes(serialization.Encoding.X962, serialization.PublicFormat.UncompressedPoint)
    try:
        p256.public_key(data)
    except ValueError as e:
        raise ReleaseError(f"{path}: {e}") from e
    return data


def point(key: ec.EllipticCurvePrivateKey) -> bytes:
    return key.public_key().public_bytes(serialization.Encoding.X962, serialization.PublicFormat.UncompressedPoint)


def fingerprint(node_key_bytes: bytes) -> str:
    """What people compare: the first 16 hex digits of SHA-256 of the node's key bytes."""
    return hashlib.sha256(node_key_bytes).hexdigest()[:16]


def sign(key: ec.EllipticCurvePrivateKey, manifest: bytes) -> bytes:
    """r || s over SHA-256(CONTEXT + manifest), s in the low half."""
    r, s = decode_dss_signature(key.sign(CONTEXT + manifest, ec.ECDSA(hashes.SHA256())))
    if s > p256.HALF_N:
        s = p256.N - s
    return r.to_bytes(32, "big") + s.to_bytes(32, "big")


def check_signature(node_key_bytes: bytes, manifest: bytes, sig: bytes) -> bool:
    """The same check with `cryptography` (a second, independent implementation; tests compare the two)."""
    if len(sig) != 64:
        return False
    pub = ec.EllipticCurvePublicKey.from_encoded_point(ec.SECP256R1(), node_key_bytes)
    der = encode_dss_signature(int.from_bytes(sig[:32], "big"), int.from_bytes(sig[32:], "big"))
    try:
        pub.verify(der, CONTEXT + manifest, ec.ECDSA(hashes.SHA256()))
    except InvalidSignature:
        return False
    return True


# --- releases ------------------------------------------------------------------------------------


@dataclass(frozen=True)
class Release:
    manifest: bytes
    sig: bytes
    files: tuple[bytes, ...]

    @property
    def decoded(self) -> dict:
        m = cbor.loads(self.manifest)
        assert isinstance(m, dict)
        return m

    @property
    def seq(self) -> int:
        return int(self.decoded["seq"])

    @property
    def fw(self) -> str:
        return str(self.decoded["fw"])

    @property
    def paths(self) -> list[str]:
        return [f[0] for f in self.decoded["files"]]

    def to_bytes(self) -> bytes:
        return cbor.dumps({"v": 1, "manifest": self.manifest, "sig": self.sig, "files": list(self.files)})

    @classmethod
    def from_bytes(cls, data: bytes, where: str = "release") -> Release:
        try:
            r = cbor.loads(data)
        except ValueError as e:
            raise ReleaseError(f"{where}: not a release file ({e})") from e
        if (not isinstance(r, dict) or r.get("v") != 1 or not isinstance(r.get("manifest"), bytes)
                or not isinstance(r.get("sig"), bytes) or not isinstance(r.get("files"), list)
                or not all(isinstance(f, bytes) for f in r["files"])):
            raise ReleaseError(f"{where}: not a v1 release file")
        try:
            m = cbor.loads(r["manifest"])
        except ValueError:
            m = None
        if not isinstance(m, dict) or not isinstance(m.get("seq"), int) or not isinstance(m.get("fw"), str) \
                or not isinstance(m.get("files"), list):
            raise ReleaseError(f"{where}: its manifest is not a v1 manifest")
        return cls(r["manifest"], r["sig"], tuple(r["files"]))

    def commands(self) -> Iterator[dict]:
        """The `ota` command args, in order: the manifest, then every chunk of every file."""
        yield {"manifest": self.manifest, "sig": self.sig}
        for i, data in enumerate(self.files):
            for off in range(0, len(data), MAX_CHUNK):
                yield {"seq": self.seq, "file": i, "off": off, "data": data[off:off + MAX_CHUNK]}


def manifest(seq: int, fw: str, files: list[tuple[str, bytes]]) -> bytes:
    return cbor.dumps({"v": 1, "seq": seq, "fw": fw,
                       "files": [[path, len(data), hashlib.sha256(data).digest()] for path, data in files]})


def build(files: list[tuple[str, bytes]], seq: int, fw: str, key: ec.EllipticCurvePrivateKey) -> Release:
    """Sign `files` ((/lib/knode/... path, content) pairs) as release `seq`; checked as a node would check it."""
    m = manifest(seq, fw, files)
    release = Release(m, sign(key, m), tuple(data for _, data in files))
    verify(release, point(key))
    return release


def verify(release: Release, node_key_bytes: bytes, seen: int = 0) -> dict:
    """The node's own acceptance check (signature, paths, sizes, seq > seen) plus the file contents."""
    try:
        m = ota_receive.check_manifest(release.manifest, release.sig, p256.public_key(node_key_bytes), seen)
    except (ota_receive.OTAError, ValueError) as e:
        raise ReleaseError(str(e).removeprefix("ota: ")) from e
    files = m["files"]
    if len(files) != len(release.files):
        raise ReleaseError(f"the manifest lists {len(files)} files, the release holds {len(release.files)}")
    for (path, size, sha), data in zip(files, release.files, strict=True):
        if len(data) != size or hashlib.sha256(data).digest() != sha:
            raise ReleaseError(f"{path}: content differs from the manifest")
    return m
