"""A folder or git source never reads outside its root: real files, links, a FIFO and a socket in tmp_path."""

from __future__ import annotations

import os
import socket
import stat
import subprocess
import threading
from pathlib import Path

import pytest

from assets.extract import FolderSource, GitSource, RawDocument, _read_confined

SECRET = b"TOP SECRET outside the source"


@pytest.fixture
def tree(tmp_path: Path) -> tuple[Path, Path]:
    """A source root and, beside it, a folder it must never read."""
    outside = tmp_path / "outside"
    (outside / "folder").mkdir(parents=True)
    (outside / "secret.md").write_bytes(SECRET)
    (outside / "folder" / "inner.md").write_bytes(SECRET)
    root = tmp_path / "root"
    (root / "docs").mkdir(parents=True)
    (root / "docs" / "a.md").write_text("# A\n\nInside.\n")
    return root, outside


def listed(root: Path, only: frozenset[str] | None = None, include: tuple[str, ...] = ("**/*",)) -> dict[str, RawDocument]:
    return {d.doc_id: d for d in FolderSource(root, include).documents(1_000_000, only)}


def assert_nothing_from_outside(docs: dict[str, RawDocument]) -> None:
    assert all(SECRET not in d.content for d in docs.values())


def test_links_that_resolve_outside_the_root_are_reported_and_never_read(tree: tuple[Path, Path]) -> None:
    root, outside = tree
    (root / "relative.md").symlink_to("../outside/secret.md")
    (root / "absolute.md").symlink_to(outside / "secret.md")
    (root / "docs" / "hop.md").symlink_to("../chain.md")  # a chain that ends outside
    (root / "chain.md").symlink_to(outside / "secret.md")
    (root / "linked").symlink_to(outside / "folder", target_is_directory=True)

    docs = listed(root)

    assert_nothing_from_outside(docs)
    for doc_id in ("relative.md", "absolute.md", "docs/hop.md", "chain.md", "linked"):
        assert docs[doc_id].skipped_kind == "outside_source" and docs[doc_id].content == b""
        assert "outside the source folder" in (docs[doc_id].skipped_reason or "")
    assert "'../outside/secret.md'" in (docs["relative.md"].skipped_reason or "")
    # The linked folder is not walked: nothing below it is listed.
    assert not any(d.startswith("linked/") for d in docs)
    assert docs["docs/a.md"].content.startswith(b"# A")
    # Its hash is stable, so the run does not crash on it, and it is retried (never indexed) each run.
    assert listed(root)["relative.md"].content_hash == docs["relative.md"].content_hash


def test_links_inside_the_root_are_read_once(tree: tuple[Path, Path]) -> None:
    root, _ = tree
    (root / "alias.md").symlink_to("docs/a.md")  # the target is listed under its own name
    (root / ".versions").mkdir()
    (root / ".versions" / "v2.md").write_text("# Version 2\n")
    (root / "current.md").symlink_to(".versions/v2.md")  # a hidden target: read through the link
    (root / "docs-link").symlink_to("docs", target_is_directory=True)
    (root / "dangling.md").symlink_to("missing.md")

    docs = listed(root)

    assert "alias.md" not in docs and "docs/a.md" in docs
    assert docs["current.md"].content == b"# Version 2\n" and docs["current.md"].skipped_kind is None
    assert not any(d.startswith("docs-link") for d in docs)
    assert docs["dangling.md"].skipped_kind == "not_a_regular_file"
    assert not any(d.startswith(".versions") for d in docs)


def test_fifo_socket_and_links_to_them_are_skipped_without_being_opened(
    tree: tuple[Path, Path], monkeypatch: pytest.MonkeyPatch
) -> None:
    root, _ = tree
    os.mkfifo(root / "pipe.md")  # opening it for reading would block until a writer comes
    (root / "to-pipe.md").symlink_to("pipe.md")
    monkeypatch.chdir(root)  # a relative socket path stays under the 108-byte limit
    server = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    server.bind("sock.md")
    result: dict[str, RawDocument] = {}
    try:
        walker = threading.Thread(target=lambda: result.update(listed(root)), daemon=True)
        walker.start()
        walker.join(timeout=30)
        assert not walker.is_alive(), "listing the source blocked on a FIFO"
    finally:
        server.close()
    assert stat.S_ISSOCK(os.lstat(root / "sock.md").st_mode)
    assert result["pipe.md"].skipped_kind == "not_a_regular_file" and "FIFO" in (result["pipe.md"].skipped_reason or "")
    assert result["sock.md"].skipped_kind == "not_a_regular_file" and "socket" in (result["sock.md"].skipped_reason or "")
    assert result["to-pipe.md"].skipped_kind == "not_a_regular_file"
    assert result["docs/a.md"].skipped_kind is None


def test_a_file_swapped_for_a_link_or_fifo_after_it_was_listed_is_not_read(tree: tuple[Path, Path]) -> None:
    """The read re-checks on the open descriptor what the listing saw: a listed regular file that has
    since become a link (O_NOFOLLOW) or a FIFO (O_NONBLOCK, fstat) is refused."""
    root, outside = tree
    root_real = os.path.realpath(root)
    fd = os.open(root / "docs", os.O_RDONLY | os.O_DIRECTORY)
    try:
        (root / "docs" / "a.md").unlink()
        (root / "docs" / "a.md").symlink_to(outside / "secret.md")
        as_link = _read_confined("docs/a.md", "a.md", fd, root_real, 1_000_000, {})
        (root / "docs" / "a.md").unlink()
        os.mkfifo(root / "docs" / "a.md")
        as_fifo = _read_confined("docs/a.md", "a.md", fd, root_real, 1_000_000, {})
    finally:
        os.close(fd)
    assert as_link is not None and as_link.skipped_kind == "not_a_regular_file" and as_link.content == b""
    assert as_fifo is not None and as_fifo.skipped_kind == "not_a_regular_file" and "FIFO" in (as_fifo.skipped_reason or "")


def test_a_folder_swapped_for_a_link_under_a_resolved_target_is_caught_on_the_descriptor(tree: tuple[Path, Path]) -> None:
    """A link's target was resolved inside the root, then a folder on its path became a link outside:
    the opened descriptor's real path is outside the root, so nothing is read."""
    root, outside = tree
    root_real = os.path.realpath(root)
    target = os.path.join(root_real, "docs", "inner.md")  # resolved while docs/ was a real folder
    (root / "docs" / "a.md").unlink()
    (root / "docs").rmdir()
    (root / "docs").symlink_to(outside / "folder", target_is_directory=True)
    doc = _read_confined("current.md", target, None, root_real, 1_000_000, {})
    assert doc is not None and doc.skipped_kind == "outside_source" and doc.content == b""


def test_hidden_files_and_folders_stay_excluded(tree: tuple[Path, Path]) -> None:
    root, _ = tree
    (root / ".git").mkdir()
    (root / ".git" / "config").write_text("[core]\n")
    (root / ".draft.md").write_text("draft")
    (root / "docs" / ".notes.md").write_text("notes")
    (root / "docs" / ".kb-access.yaml").write_text("allowed_groups: [sre]\n")
    docs = listed(root)
    assert set(docs) == {"docs/a.md"}
    assert docs["docs/a.md"].metadata["acl_groups"] == "sre"


def test_an_access_list_that_links_outside_stops_the_run(tree: tuple[Path, Path]) -> None:
    """Skipping it would leave the folder readable by everyone."""
    root, outside = tree
    (outside / "acl.yaml").write_text("allowed_groups: [everyone]\n")
    (root / "docs" / ".kb-access.yaml").symlink_to(outside / "acl.yaml")
    with pytest.raises(ValueError, match="access list"):
        listed(root)


def test_oversize_files_are_reported_with_their_kind(tree: tuple[Path, Path]) -> None:
    root, _ = tree
    (root / "big.md").write_bytes(b"x" * 2_000)
    doc = {d.doc_id: d for d in FolderSource(root).documents(1_000)}["big.md"]
    assert doc.skipped_kind == "oversize" and doc.content == b"" and doc.content_hash == "oversize:2000"
    assert "over the 1000-byte limit" in (doc.skipped_reason or "")


@pytest.mark.parametrize("path", ["../outside/secret.md", "docs/../../outside/secret.md", "/etc/passwd", "{outside}/secret.md"])
def test_webhook_paths_only_select_among_listed_documents(tree: tuple[Path, Path], path: str) -> None:
    root, outside = tree
    assert listed(root, frozenset({path.format(outside=outside)})) == {}
    assert set(listed(root, frozenset({path.format(outside=outside), "docs/a.md"}))) == {"docs/a.md"}


def git(repo: Path, *args: str) -> str:
    identity = ["-c", "user.name=Dev", "-c", "user.email=dev@example.com"]
    return subprocess.run(["git", "-C", str(repo), *identity, *args], check=True, capture_output=True, text=True).stdout


def test_git_source_reads_blobs_only(tmp_path: Path) -> None:
    """A committed symbolic link (mode 120000) is reported, not read; a submodule (160000) is left out."""
    repo = tmp_path / "repo"
    repo.mkdir()
    git(repo, "init", "-q", "-b", "main")
    (repo / "a.md").write_text("# A\n")
    (repo / "passwd.md").symlink_to("/etc/passwd")
    git(repo, "add", "-A")
    git(repo, "commit", "-qm", "first")
    head = git(repo, "rev-parse", "HEAD").strip()
    git(repo, "update-index", "--add", "--cacheinfo", f"160000,{head},vendored")  # a gitlink, as `git submodule add` makes
    git(repo, "commit", "-qm", "submodule")
    assert "160000" in git(repo, "ls-tree", "HEAD")

    docs = {d.doc_id: d for d in GitSource(repo, "main").documents(1_000_000)}

    assert set(docs) == {"a.md", "passwd.md"}
    assert docs["passwd.md"].skipped_kind == "not_a_regular_file" and docs["passwd.md"].content == b""
    assert "120000" in (docs["passwd.md"].skipped_reason or "")
    assert docs["a.md"].content == b"# A\n"
    for path in ("../../etc/passwd", "/etc/passwd", str(repo / "a.md")):
        assert GitSource(repo, "main").documents(1_000_000, frozenset({path})) == []


def test_a_root_that_is_itself_a_link_is_walked_as_its_target(tree: tuple[Path, Path], tmp_path: Path) -> None:
    """Operators may configure /srv/kb → /data/kb: the root is resolved once, and confinement holds below it."""
    root, _ = tree
    (root / "leak.md").symlink_to("../outside/secret.md")
    (tmp_path / "configured").symlink_to(root, target_is_directory=True)
    docs = listed(tmp_path / "configured")
    assert docs["docs/a.md"].content.startswith(b"# A") and docs["leak.md"].skipped_kind == "outside_source"
    assert_nothing_from_outside(docs)
