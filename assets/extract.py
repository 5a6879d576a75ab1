"""Sources: list a collection's documents with content hashes (folder or git repository at a ref)."""

from __future__ import annotations

import fnmatch
import hashlib
import subprocess
from abc import ABC, abstractmethod
from collections.abc import Iterable
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
    # Set when the file was not read (over the size limit): parse quarantines it with this reason.
    skipped_reason: str | None = None


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
    """Files under a local folder."""

    def __init__(self, root: Path, include: Iterable[str] = ("**/*",)) -> None:
        self.root = root
        self.include = tuple(include)

    def documents(self, max_bytes: int, only: frozenset[str] | None = None) -> list[RawDocument]:
        if not self.root.is_dir():
            raise FileNotFoundError(f"source folder {self.root} does not exist")
        found = []
        acls = {_folder_of(p.relative_to(self.root).as_posix()): read_acl_file(p.read_bytes(), str(p))
                for p in sorted(self.root.rglob(ACL_FILE)) if p.is_file()}  # fmt: skip
        for path in sorted(self.root.rglob("*")):
            if not path.is_file() or any(part.startswith(".") for part in path.relative_to(self.root).parts):
                continue
            doc_id = path.relative_to(self.root).as_posix()
            if (only is not None and doc_id not in only) or not _matches(doc_id, self.include):
                continue
            doc = _read(doc_id, path.stat().st_size, path.read_bytes, max_bytes, {"path": doc_id})
            found.append(with_acl(doc, folder_acl(doc_id, acls)))
        return found


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
            _mode, kind, _blob, size = info.decode().split()
            path = raw_path.decode("utf-8", errors="replace")
            if kind == "blob" and path.startswith(prefix):
                blobs.append((path, path[len(prefix) :], int(size)))
        acls = {_folder_of(doc_id): read_acl_file(self._git("show", f"{commit}:{path}"), f"{self.repo}:{path}")
                for path, doc_id, _ in blobs if doc_id.rpartition("/")[2] == ACL_FILE}  # fmt: skip
        found = []
        for path, doc_id, size in blobs:
            if (
                doc_id.rpartition("/")[2] == ACL_FILE
                or (only is not None and doc_id not in only)
                or not _matches(doc_id, self.include)
            ):
                continue
            sha, author, date = last_commits.get(path, (commit, "", ""))
            meta = {"path": doc_id, "repo": str(self.repo), "commit": sha, "author": author, "committed_at": date}
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


def _read(doc_id: str, size: int, load: object, max_bytes: int, metadata: dict[str, str]) -> RawDocument:
    if size > max_bytes:
        reason = f"file is {size} bytes, over the {max_bytes}-byte limit"
        return RawDocument(doc_id, b"", f"oversize:{size}", size, metadata, skipped_reason=reason)
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
