"""Sources: list a collection's documents with content hashes (folder or git repository at a ref)."""

from __future__ import annotations

import errno
import fnmatch
import hashlib
import os
import stat
import subprocess
from abc import ABC, abstractmethod
from collections.abc import Iterable, Iterator
from dataclasses import dataclass, field, replace
from pathlib import Path

from assets.collections import SourceSpec

# Document access lists: the groups that may read a document, from its front matter (`allowed_groups`)
# or from the nearest `.kb-access.yaml` (`allowed_groups: [...]`) in its folder or above. Kept on every
# chunk as metadata `acl_groups`; a document without one is readable by every role that reads its collection.
ACL_KEY = "acl_groups"
ACL_FRONT_MATTER_KEY = "allowed_groups"
ACL_FILE = ".kb-access.yaml"


def parse_groups(value: object) -> list[str]:
    """Groups from a list or a comma/space separated string, in order, without duplicates."""
    items = value if isinstance(value, list | tuple) else str(value or "").replace(",", " ").split()
    return list(dict.fromkeys(str(g).strip() for g in items if str(g).strip()))


def read_acl_file(content: bytes, where: str) -> list[str]:
    """The groups a `.kb-access.yaml` names; ValueError (with `where`) for a file that does not parse,
    which stops the run rather than indexing the folder readable by everyone."""
    import yaml

    try:
        data = yaml.safe_load(content.decode("utf-8")) or {}
    except (yaml.YAMLError, UnicodeDecodeError) as exc:
        raise ValueError(f"{where}: not valid YAML ({exc})") from exc
    if not isinstance(data, dict) or ACL_FRONT_MATTER_KEY not in data:
        raise ValueError(f"{where}: expected `{ACL_FRONT_MATTER_KEY}: [group, ...]`")
    groups = parse_groups(data[ACL_FRONT_MATTER_KEY])
    if not groups:
        raise ValueError(f"{where}: `{ACL_FRONT_MATTER_KEY}` names no group")
    return groups


def folder_acl(doc_id: str, acls: dict[str, list[str]]) -> list[str] | None:
    """The access list of the nearest folder (of `doc_id`, a POSIX path) that has one; '' is the root."""
    parts = doc_id.split("/")[:-1]
    for depth in range(len(parts), -1, -1):
        folder = "/".join(parts[:depth])
        if folder in acls:
            return acls[folder]
    return None


def _folder_of(posix_path: str) -> str:
    return posix_path.rpartition("/")[0]


def with_acl(doc: RawDocument, acl: list[str] | None) -> RawDocument:
    """The document with its folder's access list as metadata, and in its content hash, so that changing
    a folder's access list re-indexes its documents although their bytes did not change."""
    if not acl:
        return doc
    joined = ", ".join(acl)
    return replace(
        doc, metadata={**doc.metadata, ACL_KEY: joined}, content_hash=sha256(f"{doc.content_hash}|acl:{joined}".encode())
    )


@dataclass(frozen=True)
class RawDocument:
    """A source file as bytes; `doc_id` is its path relative to the source root (POSIX form)."""

    doc_id: str
    content: bytes
    content_hash: str
    size: int
    metadata: dict[str, str] = field(default_factory=dict)
    # Set when the file was not read: parse quarantines it with this reason (an operator's message) and
    # kind (a short code: "oversize", "outside_source", "not_a_regular_file", "unreadable").
    skipped_reason: str | None = None
    skipped_kind: str | None = None


def sha256(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def _matches(doc_id: str, include: Iterable[str]) -> bool:
    # "**/" also matches zero folders, so "**/*.md" takes top-level files too.
    return any(
        fnmatch.fnmatch(doc_id, pattern) or (pattern.startswith("**/") and fnmatch.fnmatch(doc_id, pattern[3:]))
        for pattern in include
    )


class Source(ABC):
    """A place documents come from. `only` narrows listing to given doc ids (webhook-driven runs)."""

    @abstractmethod
    def documents(self, max_bytes: int, only: frozenset[str] | None = None) -> list[RawDocument]: ...


class FolderSource(Source):
    """Files under a local folder, never anything outside it.

    Hidden files and folders are left out. Folders are walked by file descriptor, each opened with
    O_NOFOLLOW below its parent's descriptor, so a folder swapped for a symbolic link mid-walk is not
    entered; symbolically linked folders are never walked. A symbolic link to a file is read only when it
    resolves inside the root and its target is not itself one of the listed documents (which it would
    index twice); a link that resolves outside the root, and a socket, FIFO or device, are never opened
    but reported as skipped documents, so that operators see them in the quarantine.
    """

    def __init__(self, root: Path, include: Iterable[str] = ("**/*",)) -> None:
        self.root = root
        self.include = tuple(include)

    def documents(self, max_bytes: int, only: frozenset[str] | None = None) -> list[RawDocument]:
        if not self.root.is_dir():
            raise FileNotFoundError(f"source folder {self.root} does not exist")
        root = os.path.realpath(self.root)
        found: list[RawDocument] = []
        acls: dict[str, list[str]] = {}
        root_fd = os.open(root, _DIR_FLAGS)
        try:
            for doc_id, name, dir_fd, mode in _walk(root_fd, ""):
                if name == ACL_FILE:
                    acls[_folder_of(doc_id)] = self._acl(root, doc_id, name, dir_fd, mode)
                elif stat.S_ISLNK(mode) and os.path.isdir(os.path.join(root, doc_id)):
                    if _folder_in_scope(doc_id, only) and not _inside(root, _resolve(root, doc_id)):
                        found.append(_outside(doc_id, name, dir_fd))
                elif (only is None or doc_id in only) and _matches(doc_id, self.include):
                    doc = self._document(root, doc_id, name, dir_fd, mode, max_bytes)
                    if doc is not None:
                        found.append(doc)
        finally:
            os.close(root_fd)
        found.sort(key=lambda d: d.doc_id.split("/"))
        return [with_acl(doc, folder_acl(doc.doc_id, acls)) for doc in found]

    def _listed(self, doc_id: str) -> bool:
        """Whether a path inside the root is one of this source's documents under its own name."""
        return not any(part.startswith(".") for part in doc_id.split("/")) and _matches(doc_id, self.include)

    def _document(self, root: str, doc_id: str, name: str, dir_fd: int, mode: int, max_bytes: int) -> RawDocument | None:
        """The entry as a document; None for a link whose target is listed under its own name, or a file
        that vanished since it was listed (it is then gone from the source)."""
        meta = {"path": doc_id}
        if stat.S_ISLNK(mode):
            target = _resolve(root, doc_id)
            if not _inside(root, target):
                return _outside(doc_id, name, dir_fd)
            try:
                target_mode = os.stat(target).st_mode
            except OSError:
                return skipped(doc_id, "not_a_regular_file", "a symbolic link to a missing file is not read", 0, meta)
            if not stat.S_ISREG(target_mode):  # a device or FIFO inside the root is not opened through a link either
                return skipped(doc_id, "not_a_regular_file", f"a symbolic link to {_file_type(target_mode)}: not read", 0, meta)
            if self._listed(os.path.relpath(target, root).replace(os.sep, "/")):
                return None
            return _read_confined(doc_id, target, None, root, max_bytes, meta)
        if not stat.S_ISREG(mode):
            return skipped(doc_id, "not_a_regular_file", f"{_file_type(mode)} is not read", 0, meta)
        return _read_confined(doc_id, name, dir_fd, root, max_bytes, meta)

    def _acl(self, root: str, doc_id: str, name: str, dir_fd: int, mode: int) -> list[str]:
        """A folder's access list; a `.kb-access.yaml` that cannot be read safely stops the run (as one
        that does not parse does) rather than leaving the folder readable by everyone."""
        where = os.path.join(root, doc_id)
        path: str = name
        fd: int | None = dir_fd
        if stat.S_ISLNK(mode):  # a link to an access list inside the root is read there
            path, fd = _resolve(root, doc_id), None
            if not _inside(root, path):
                raise ValueError(f"{where}: access list is a symbolic link to outside the source folder, not followed")
        doc = _read_confined(doc_id, path, fd, root, _ACL_MAX_BYTES, {})
        if doc is None or doc.skipped_reason:
            raise ValueError(f"{where}: access list not read ({doc.skipped_reason if doc else 'it vanished'})")
        return read_acl_file(doc.content, where)


# Folders are opened by descriptor without following a link, and without blocking should one have been
# swapped for a FIFO; files likewise, so that a file replaced by a link or a FIFO after it was listed is
# refused by open() itself rather than read.
_DIR_FLAGS = os.O_RDONLY | os.O_DIRECTORY | os.O_NOFOLLOW | os.O_NONBLOCK | os.O_CLOEXEC
_FILE_FLAGS = os.O_RDONLY | os.O_NOFOLLOW | os.O_NONBLOCK | os.O_CLOEXEC
_ACL_MAX_BYTES = 1_000_000
# Deeper folders are not walked: the walk recurses, and no knowledge base nests this deep.
_MAX_DEPTH = 200


def _walk(dir_fd: int, folder: str, depth: int = 0) -> Iterator[tuple[str, str, int, int]]:
    """(doc_id, name, descriptor of its folder, lstat mode) of each non-folder entry below a folder, in
    name order; hidden names are left out but for access-list files."""
    with os.scandir(dir_fd) as entries:
        names = sorted(e.name for e in entries)
    for name in names:
        if name.startswith(".") and name != ACL_FILE:
            continue
        doc_id = f"{folder}/{name}" if folder else name
        try:
            mode = os.stat(name, dir_fd=dir_fd, follow_symlinks=False).st_mode
        except FileNotFoundError:
            continue  # removed since it was listed
        if not stat.S_ISDIR(mode):
            yield doc_id, name, dir_fd, mode
            continue
        if depth >= _MAX_DEPTH:
            continue
        try:
            sub_fd = os.open(name, _DIR_FLAGS, dir_fd=dir_fd)
        except OSError:
            continue  # replaced by a link or removed since it was listed, or not readable: not walked
        try:
            yield from _walk(sub_fd, doc_id, depth + 1)
        finally:
            os.close(sub_fd)


def _resolve(root: str, doc_id: str) -> str:
    return os.path.realpath(os.path.join(root, *doc_id.split("/")))


def _inside(root: str, path: str) -> bool:
    return path == root or path.startswith(root.rstrip(os.sep) + os.sep)


def _folder_in_scope(folder: str, only: frozenset[str] | None) -> bool:
    """Whether a (linked) folder holds any of the documents a webhook-driven run is limited to."""
    return only is None or any(d == folder or d.startswith(f"{folder}/") for d in only)


def _outside(doc_id: str, name: str, dir_fd: int) -> RawDocument:
    try:
        target = os.readlink(name, dir_fd=dir_fd)
    except OSError:
        target = "?"
    reason = f"a symbolic link to {target[:200]!r}, outside the source folder: not followed"
    return skipped(doc_id, "outside_source", reason, 0, {"path": doc_id})


def _file_type(mode: int) -> str:
    if stat.S_ISFIFO(mode):
        return "a named pipe (FIFO)"
    if stat.S_ISSOCK(mode):
        return "a socket"
    if stat.S_ISCHR(mode) or stat.S_ISBLK(mode):
        return "a device file"
    return "a special file"


def _opened_inside(fd: int, root: str, expected: str) -> bool:
    """Whether an open descriptor is a file inside the root: its path from /proc (Linux), else the same
    file as the path it was opened by."""
    try:
        return _inside(root, os.readlink(f"/proc/self/fd/{fd}").removesuffix(" (deleted)"))
    except OSError:
        try:
            return os.path.samestat(os.fstat(fd), os.stat(expected, follow_symlinks=False))
        except OSError:
            return False


def _read_confined(
    doc_id: str, path: str, dir_fd: int | None, root: str, max_bytes: int, metadata: dict[str, str]
) -> RawDocument | None:
    """Open without following a final link and without blocking, then check on the descriptor that it
    is a regular file inside the root and not over the size limit, and only then read it: a file swapped
    for a link, FIFO or device between listing and reading is refused. None when it vanished."""
    try:
        fd = os.open(path, _FILE_FLAGS, dir_fd=dir_fd)
    except FileNotFoundError:
        return None
    except OSError as exc:
        if exc.errno == errno.ELOOP:
            return skipped(doc_id, "not_a_regular_file", "became a symbolic link while it was read: not followed", 0, metadata)
        return skipped(doc_id, "unreadable", f"cannot be opened ({os.strerror(exc.errno or 0)})", 0, metadata)
    try:
        info = os.fstat(fd)
        expected = path if dir_fd is None else os.path.join(root, *doc_id.split("/"))
        if not stat.S_ISREG(info.st_mode):
            return skipped(doc_id, "not_a_regular_file", f"{_file_type(info.st_mode)} is not read", 0, metadata)
        if not _opened_inside(fd, root, expected):
            return skipped(doc_id, "outside_source", "resolves outside the source folder: not read", 0, metadata)
        if info.st_size > max_bytes:
            return _oversize(doc_id, info.st_size, max_bytes, metadata)
        content = _read_at_most(fd, max_bytes + 1)
    finally:
        os.close(fd)
    if len(content) > max_bytes:  # it grew after fstat
        return _oversize(doc_id, len(content), max_bytes, metadata)
    return RawDocument(doc_id, content, sha256(content), len(content), metadata)


def _read_at_most(fd: int, limit: int) -> bytes:
    parts: list[bytes] = []
    left = limit
    while left > 0:
        part = os.read(fd, min(left, 1 << 20))
        if not part:
            break
        parts.append(part)
        left -= len(part)
    return b"".join(parts)


class GitSource(Source):
    """Files of a git repository at a ref, with the last commit that touched each file."""

    def __init__(self, repo: Path, ref: str = "HEAD", subdir: str = "", include: Iterable[str] = ("**/*",)) -> None:
        self.repo = repo
        self.ref = ref
        self.subdir = subdir.strip("/")
        self.include = tuple(include)

    def _git(self, *args: str) -> bytes:
        return subprocess.run(["git", "-C", str(self.repo), *args], check=True, capture_output=True).stdout

    def documents(self, max_bytes: int, only: frozenset[str] | None = None) -> list[RawDocument]:
        commit = self._git("rev-parse", f"{self.ref}^{{commit}}").decode().strip()
        last_commits = self._last_commits(commit)
        prefix = f"{self.subdir}/" if self.subdir else ""
        blobs = []
        # --long gives sizes, so oversized blobs are never read.
        for entry in self._git("ls-tree", "-r", "-z", "--long", commit, "--", self.subdir or ".").split(b"\0"):
            if not entry:
                continue
            info, _, raw_path = entry.partition(b"\t")
            mode, kind, _blob, size_field = info.decode().split()
            path = raw_path.decode("utf-8", errors="replace")
            # Blobs only: submodules are "commit" entries; a symbolic link is a blob of mode 120000 that
            # holds its target's path, which is never followed (it may point outside the repository).
            if kind == "blob" and path.startswith(prefix):
                blobs.append((path, path[len(prefix) :], int(size_field) if size_field != "-" else 0, mode == _GIT_SYMLINK))
        acls = {}
        for path, doc_id, _, is_link in blobs:
            if doc_id.rpartition("/")[2] == ACL_FILE:
                if is_link:
                    raise ValueError(f"{self.repo}:{path}: access list is a symbolic link, which is not followed")
                acls[_folder_of(doc_id)] = read_acl_file(self._git("show", f"{commit}:{path}"), f"{self.repo}:{path}")
        found = []
        for path, doc_id, size, is_link in blobs:
            if (
                doc_id.rpartition("/")[2] == ACL_FILE
                or (only is not None and doc_id not in only)
                or not _matches(doc_id, self.include)
            ):
                continue
            sha, author, date = last_commits.get(path, (commit, "", ""))
            meta = {"path": doc_id, "repo": str(self.repo), "commit": sha, "author": author, "committed_at": date}
            if is_link:
                doc = skipped(doc_id, "not_a_regular_file", "a symbolic link (git mode 120000): not followed", size, meta)
            else:
                doc = _read(doc_id, size, lambda p=path: self._git("show", f"{commit}:{p}"), max_bytes, meta)
            found.append(with_acl(doc, folder_acl(doc_id, acls)))
        return found

    def _last_commits(self, commit: str) -> dict[str, tuple[str, str, str]]:
        """Map each path to the newest commit (sha, author, ISO date) that touched it, in one git call."""
        out = self._git("log", "--name-only", "-z", "--format=%x01%H%x00%an%x00%aI", commit).decode("utf-8", "replace")
        latest: dict[str, tuple[str, str, str]] = {}
        for record in out.split("\x01")[1:]:
            fields = [f.strip("\n") for f in record.split("\x00")]
            sha, author, date, *paths = fields
            for path in paths:
                if path and path not in latest:
                    latest[path] = (sha, author, date)
        return latest


_GIT_SYMLINK = "120000"


def skipped(doc_id: str, kind: str, reason: str, size: int, metadata: dict[str, str]) -> RawDocument:
    """A document that was not read: parse quarantines it with `reason`. Its hash is stable, and as it
    is never indexed it is retried on every run."""
    return RawDocument(doc_id, b"", f"{kind}:{size}", size, metadata, skipped_reason=reason, skipped_kind=kind)


def _oversize(doc_id: str, size: int, max_bytes: int, metadata: dict[str, str]) -> RawDocument:
    return skipped(doc_id, "oversize", f"file is {size} bytes, over the {max_bytes}-byte limit", size, metadata)


def _read(doc_id: str, size: int, load: object, max_bytes: int, metadata: dict[str, str]) -> RawDocument:
    if size > max_bytes:
        return _oversize(doc_id, size, max_bytes, metadata)
    assert callable(load)
    content: bytes = load()
    return RawDocument(doc_id, content, sha256(content), size, metadata)


def source_for(spec: SourceSpec, cache_dir: Path | None = None) -> Source:
    """Build the source a collection's config names; remote git repositories are mirrored into `cache_dir`."""
    if spec.kind == "folder":
        return FolderSource(Path(spec.path), spec.include)
    repo = Path(spec.path)
    if "://" in spec.path or spec.path.startswith("git@"):
        if cache_dir is None:
            raise ValueError("a remote git source needs a cache directory")
        repo = _mirror(spec.path, cache_dir)
    return GitSource(repo, spec.ref, spec.subdir, spec.include)


def _mirror(url: str, cache_dir: Path) -> Path:
    target = cache_dir / hashlib.sha256(url.encode()).hexdigest()[:16]
    if target.exists():
        subprocess.run(["git", "-C", str(target), "fetch", "--prune", "origin", "+refs/*:refs/*"], check=True)
    else:
        cache_dir.mkdir(parents=True, exist_ok=True)
        subprocess.run(["git", "clone", "--mirror", url, str(target)], check=True)
    return target
