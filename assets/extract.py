"""Sources: list a collection's documents with content hashes (folder or git repository at a ref)."""

from __future__ import annotations

import fnmatch
import hashlib
import subprocess
from abc import ABC, abstractmethod
from collections.abc import Iterable
from dataclasses import dataclass, field
from pathlib import Path

from assets.collections import SourceSpec


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
        for path in sorted(self.root.rglob("*")):
            if not path.is_file() or any(part.startswith(".") for part in path.relative_to(self.root).parts):
                continue
            doc_id = path.relative_to(self.root).as_posix()
            if (only is not None and doc_id not in only) or not _matches(doc_id, self.include):
                continue
            found.append(_read(doc_id, path.stat().st_size, path.read_bytes, max_bytes, {"path": doc_id}))
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
        found = []
        # --long gives sizes, so oversized blobs are never read.
        for entry in self._git("ls-tree", "-r", "-z", "--long", commit, "--", self.subdir or ".").split(b"\0"):
            if not entry:
                continue
            info, _, raw_path = entry.partition(b"\t")
            _mode, kind, _blob, size = info.decode().split()
            path = raw_path.decode("utf-8", errors="replace")
            if kind != "blob" or not path.startswith(prefix):
                continue
            doc_id = path[len(prefix) :]
            if (only is not None and doc_id not in only) or not _matches(doc_id, self.include):
                continue
            sha, author, date = last_commits.get(path, (commit, "", ""))
            meta = {"path": doc_id, "repo": str(self.repo), "commit": sha, "author": author, "committed_at": date}
            found.append(_read(doc_id, int(size), lambda p=path: self._git("show", f"{commit}:{p}"), max_bytes, meta))
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
