"""The backup archive: one tar holding `manifest.json`, the members it lists with their sha256 and size, and
the manifest's own sha256 last, so that any changed byte of content is caught; optionally inside the
passphrase envelope (kb/ops/envelope.py), which also authenticates the whole file.

Reading verifies everything into a staging folder before the caller acts on any of it.
"""

from __future__ import annotations

import hashlib
import json
import os
import re
import tarfile
from collections.abc import Mapping
from io import BytesIO
from pathlib import Path
from typing import IO, Any, BinaryIO, cast

from kb.ops.envelope import EncryptingWriter, EnvelopeError, decrypt_file, is_encrypted

FORMAT = 1
MANIFEST = "manifest.json"
MANIFEST_DIGEST = "manifest.sha256"
# Plain relative names of at most two parts, no dot files and no `..`: an archive names files, not places.
_MEMBER_NAME = re.compile(r"[a-z0-9][a-z0-9_.-]*(/[A-Za-z0-9][A-Za-z0-9_.-]*)?")
_CHUNK = 1 << 20


class ArchiveError(ValueError):
    """The archive is not one `kb backup` wrote, or it was altered, damaged or cannot be decrypted."""


def sha256_file(path: Path) -> str:
    with path.open("rb") as file:
        return hashlib.file_digest(file, "sha256").hexdigest()


def private_file(path: Path) -> BinaryIO:
    """A new file readable by its owner only (archives hold sessions and the audit key)."""
    return os.fdopen(os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600), "wb")


def write_archive(target: Path, members: Mapping[str, Path], manifest: Mapping[str, Any], passphrase: str | None,
                  mtime: float) -> dict[str, Any]:  # fmt: skip
    """Write the archive to `target` atomically (mode 0600); returns the manifest as stored."""
    listed = {name: {"sha256": sha256_file(path), "bytes": path.stat().st_size} for name, path in members.items()}
    stored = {**manifest, "format": FORMAT, "members": listed}
    body = json.dumps(stored, indent=2, sort_keys=True).encode()
    partial = target.with_name(f".{target.name}.partial")
    try:
        with private_file(partial) as out:
            sink = EncryptingWriter(out, passphrase) if passphrase else out
            with tarfile.open(fileobj=cast(IO[bytes], sink), mode="w|", format=tarfile.PAX_FORMAT) as tar:
                _add(tar, MANIFEST, BytesIO(body), len(body), mtime)
                for name, path in members.items():
                    with path.open("rb") as file:
                        _add(tar, name, file, path.stat().st_size, mtime)
                digest = (hashlib.sha256(body).hexdigest() + "\n").encode()
                _add(tar, MANIFEST_DIGEST, BytesIO(digest), len(digest), mtime)
            if isinstance(sink, EncryptingWriter):
                sink.close()
            out.flush()
            os.fsync(out.fileno())
        os.replace(partial, target)
    except BaseException:
        partial.unlink(missing_ok=True)
        raise
    return stored


def _add(tar: tarfile.TarFile, name: str, file: IO[bytes], size: int, mtime: float) -> None:
    if not _MEMBER_NAME.fullmatch(name):
        raise ValueError(f"invalid archive member name {name!r}")
    info = tarfile.TarInfo(name)
    info.size, info.mode, info.mtime = size, 0o600, mtime
    tar.addfile(info, file)


def read_archive(archive: Path, staging: Path, passphrase: str | None) -> tuple[dict[str, Any], Path]:
    """Decrypt (when encrypted) and unpack `archive` under `staging`, verifying the manifest and every member's
    checksum; returns the manifest and the folder holding the members."""
    if not archive.is_file():
        raise ArchiveError(f"{archive} is not a file")
    plain = archive
    if is_encrypted(archive):
        if not passphrase:
            raise ArchiveError(f"{archive.name} is encrypted: set KB_BACKUP_PASSPHRASE to the passphrase it was written with")
        plain = staging / "archive.tar"
        try:
            decrypt_file(archive, plain, passphrase)
        except EnvelopeError as error:
            raise ArchiveError(str(error)) from None
    files = staging / "members"
    files.mkdir(mode=0o700)
    seen = _extract(plain, files)
    if plain != archive:
        plain.unlink()
    return _verified_manifest(files, seen), files


def _extract(plain: Path, files: Path) -> dict[str, tuple[str, int]]:
    """Every member as a file under `files`; the sha256 and size of each, computed while writing."""
    seen: dict[str, tuple[str, int]] = {}
    try:
        with tarfile.open(plain, mode="r:*") as tar:
            for info in tar:
                if not info.isfile() or not _MEMBER_NAME.fullmatch(info.name) or info.name in seen:
                    raise ArchiveError(f"unexpected member {info.name!r}: not an archive `kb backup` wrote")
                seen[info.name] = _copy_member(tar, info, files / info.name)
    except (tarfile.TarError, EOFError, OSError) as error:
        raise ArchiveError(f"not a kb backup archive, or damaged: {error}") from None
    return seen


def _copy_member(tar: tarfile.TarFile, info: tarfile.TarInfo, target: Path) -> tuple[str, int]:
    target.parent.mkdir(mode=0o700, exist_ok=True)
    source = tar.extractfile(info)
    assert source is not None  # a regular file
    digest, size = hashlib.sha256(), 0
    with private_file(target) as out:
        while block := source.read(_CHUNK):
            digest.update(block)
            size += len(block)
            out.write(block)
    return digest.hexdigest(), size


def _verified_manifest(files: Path, seen: Mapping[str, tuple[str, int]]) -> dict[str, Any]:
    if MANIFEST not in seen or MANIFEST_DIGEST not in seen:
        raise ArchiveError("no manifest: not an archive `kb backup` wrote")
    body = (files / MANIFEST).read_bytes()
    if (files / MANIFEST_DIGEST).read_text(encoding="ascii", errors="replace").strip() != hashlib.sha256(body).hexdigest():
        raise ArchiveError("the manifest does not match its checksum: the archive was altered or is damaged")
    try:
        manifest = json.loads(body)
        if manifest.get("format") != FORMAT:
            raise ArchiveError(f"archive format {manifest.get('format')!r} is not one this kb reads (format {FORMAT})")
        listed = {name: (meta["sha256"], meta["bytes"]) for name, meta in manifest["members"].items()}
    except (ValueError, KeyError, TypeError, AttributeError) as error:
        if isinstance(error, ArchiveError):
            raise
        raise ArchiveError(f"the manifest is malformed: {error}") from None
    unlisted = sorted(set(seen) - set(listed) - {MANIFEST, MANIFEST_DIGEST})
    missing = sorted(set(listed) - set(seen))
    if unlisted or missing:
        raise ArchiveError(f"the archive's members do not match its manifest (missing {missing}, unlisted {unlisted})")
    for name, expected in listed.items():
        if seen[name] != expected:
            raise ArchiveError(f"{name} does not match its checksum: the archive was altered or is damaged")
    return dict(manifest)
