"""Passphrase encryption of a backup archive: AES-256-GCM over the whole archive, streamed, with the key
derived from the passphrase by scrypt. The passphrase is never stored; the file holds only the salt and
the scrypt parameters it needs.

Layout: MAGIC | salt (16) | log2 N, r, p (3 bytes) | nonce (12) | check (32) | ciphertext | tag (16).
Everything before the check is authenticated as GCM's associated data. The check (an HMAC under a second
key from the same scrypt output) tells a wrong passphrase apart from an altered archive before any byte
is decrypted; the tag then covers every byte of the archive.
"""

from __future__ import annotations

import hashlib
import hmac
import os
import struct
from dataclasses import dataclass
from pathlib import Path
from typing import BinaryIO

MAGIC = b"KBBKENC1"
SALT_BYTES = 16
NONCE_BYTES = 12
TAG_BYTES = 16
CHECK_BYTES = 32
HEADER_BYTES = len(MAGIC) + SALT_BYTES + 3 + NONCE_BYTES
# scrypt with N = 2**15, r = 8: 32 MiB and a fraction of a second per derivation.
LOG2_N, R, P = 15, 8, 1
# A header is read before it is authenticated: bounds keep a crafted one from asking for gigabytes.
MAX_LOG2_N, MAX_R, MAX_P = 20, 16, 4
CHUNK = 1 << 20


class EnvelopeError(ValueError):
    """The encrypted archive cannot be opened; the message never contains the passphrase."""


@dataclass(frozen=True)
class _Header:
    salt: bytes
    log2_n: int
    r: int
    p: int
    nonce: bytes

    def pack(self) -> bytes:
        return MAGIC + self.salt + struct.pack(">BBB", self.log2_n, self.r, self.p) + self.nonce

    @classmethod
    def unpack(cls, data: bytes) -> _Header:
        salt = data[len(MAGIC) : len(MAGIC) + SALT_BYTES]
        log2_n, r, p = struct.unpack(">BBB", data[len(MAGIC) + SALT_BYTES : len(MAGIC) + SALT_BYTES + 3])
        if not (10 <= log2_n <= MAX_LOG2_N and 1 <= r <= MAX_R and 1 <= p <= MAX_P):
            raise EnvelopeError("the archive's encryption header is damaged (scrypt parameters out of range)")
        return cls(salt, log2_n, r, p, data[HEADER_BYTES - NONCE_BYTES : HEADER_BYTES])


def is_encrypted(path: Path) -> bool:
    with path.open("rb") as file:
        return file.read(len(MAGIC)) == MAGIC


def _keys(passphrase: str, header: _Header) -> tuple[bytes, bytes]:
    """The encryption key and the check key."""
    from cryptography.hazmat.primitives.kdf.scrypt import Scrypt

    material = Scrypt(salt=header.salt, length=64, n=2**header.log2_n, r=header.r, p=header.p).derive(passphrase.encode())
    return material[:32], material[32:]


def _check(check_key: bytes, header: bytes) -> bytes:
    return hmac.new(check_key, b"kb-backup-passphrase-check" + header, hashlib.sha256).digest()


class EncryptingWriter:
    """A write-only file that encrypts into `out`; `close()` writes the tag (the archive is incomplete without it)."""

    def __init__(self, out: BinaryIO, passphrase: str) -> None:
        from cryptography.hazmat.primitives.ciphers import Cipher, algorithms, modes

        header = _Header(os.urandom(SALT_BYTES), LOG2_N, R, P, os.urandom(NONCE_BYTES))
        packed = header.pack()
        key, check_key = _keys(passphrase, header)
        self._out = out
        self._encryptor = Cipher(algorithms.AES(key), modes.GCM(header.nonce)).encryptor()
        self._encryptor.authenticate_additional_data(packed)
        out.write(packed + _check(check_key, packed))

    def write(self, data: bytes) -> int:
        self._out.write(self._encryptor.update(data))
        return len(data)

    def close(self) -> None:
        self._out.write(self._encryptor.finalize() + self._encryptor.tag)


def decrypt_file(source: Path, target: Path, passphrase: str) -> None:
    """Decrypt `source` into `target` (mode 0600); raises EnvelopeError for a wrong passphrase or any altered byte.
    `target` is only trustworthy once this returns: GCM authenticates at the end."""
    from cryptography.exceptions import InvalidTag
    from cryptography.hazmat.primitives.ciphers import Cipher, algorithms, modes

    size = source.stat().st_size
    if size < HEADER_BYTES + CHECK_BYTES + TAG_BYTES:
        raise EnvelopeError("the encrypted archive is truncated")
    with source.open("rb") as file:
        packed = file.read(HEADER_BYTES)
        header = _Header.unpack(packed)
        key, check_key = _keys(passphrase, header)
        if not hmac.compare_digest(file.read(CHECK_BYTES), _check(check_key, packed)):
            raise EnvelopeError("wrong passphrase for this archive (KB_BACKUP_PASSPHRASE), or its header was altered")
        file.seek(size - TAG_BYTES)
        tag = file.read(TAG_BYTES)
        file.seek(HEADER_BYTES + CHECK_BYTES)
        decryptor = Cipher(algorithms.AES(key), modes.GCM(header.nonce, tag)).decryptor()
        decryptor.authenticate_additional_data(packed)
        remaining = size - TAG_BYTES - HEADER_BYTES - CHECK_BYTES
        fd = os.open(target, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
        with os.fdopen(fd, "wb") as out:
            while remaining:
                block = file.read(min(CHUNK, remaining))
                if not block:
                    raise EnvelopeError("the encrypted archive is truncated")
                remaining -= len(block)
                out.write(decryptor.update(block))
            try:
                out.write(decryptor.finalize())
            except InvalidTag:
                raise EnvelopeError("the encrypted archive was altered or is damaged (authentication failed)") from None
