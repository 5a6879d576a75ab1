"""Gitea connector: read-only answers about repositories, files, commits, pull requests and comparisons.

Every tool checks the repository against `gitea.repos` (owner/name globs; an empty allow list allows
nothing) before any request leaves the process, and validates paths and refs so no argument can
reach another endpoint. Gitea's own auth scheme is used: `Authorization: token <t>`.
"""

from __future__ import annotations

import re
from typing import Annotated, Any
from urllib.parse import quote

from mcp.server import MCPServer
from mcp.server.mcpserver.exceptions import ToolError
from pydantic import Field

from connectors.base import READ_ONLY, check_allowed, new_server, render
from connectors.config import AllowDeny, ConnectorsConfig, GiteaConfig
from connectors.http import ReadOnlyClient, UpstreamError
from connectors.masking import mask_output

REPOS_KEY = "gitea.repos.allow"
_REPO = re.compile(r"^[A-Za-z0-9_][A-Za-z0-9_.-]{0,99}/[A-Za-z0-9_][A-Za-z0-9_.-]{0,99}$")
_REF = re.compile(r"^[A-Za-z0-9_][A-Za-z0-9_./+-]{0,199}$")
_PATH_CHARS = re.compile(r"^[A-Za-z0-9_. /+@=-]{1,500}$")

# Bounds of the tree-and-grep code search: files read, bytes read, size of one file, matches shown.
SEARCH_MAX_FILES = 200
SEARCH_MAX_BYTES = 2_000_000
SEARCH_MAX_FILE_BYTES = 256_000
SEARCH_MAX_MATCHES = 50
_BINARY_SUFFIXES = (".png", ".jpg", ".jpeg", ".gif", ".ico", ".pdf", ".zip", ".gz", ".tgz", ".jar", ".so", ".exe", ".bin",
                    ".woff", ".woff2", ".ttf", ".wasm", ".lock")  # fmt: skip


Repo = Annotated[str, Field(description="Repository as owner/name, e.g. payments/gateway-core")]
Ref = Annotated[str, Field(description="Branch, tag or commit; empty: the default branch")]


def gitea_client(url: str, token: str | None, timeout: float) -> ReadOnlyClient:
    """A GET-only client sending Gitea's `Authorization: token <t>` header (not a bearer)."""
    headers = {"Authorization": f"token {token}"} if token else {}
    return ReadOnlyClient(url, None, timeout, headers=headers)


def check_repo(repo: str, allowed: AllowDeny, config_key: str = REPOS_KEY) -> tuple[str, str]:
    """`owner/name` validated and allowed, as its two URL-quoted parts; Refused or ToolError otherwise."""
    repo = repo.strip()
    if not _REPO.match(repo) or ".." in repo:
        raise ToolError(f"repo must be owner/name (letters, digits, . _ -), got {repo!r}")
    check_allowed(allowed, "repository", repo, config_key)
    owner, name = repo.split("/")
    return quote(owner, safe=""), quote(name, safe="")


def check_ref(ref: str, what: str = "ref") -> str:
    """A branch, tag or commit name safe to put in a URL path or query; '' stays ''."""
    ref = ref.strip()
    if not ref:
        return ""
    if not _REF.match(ref) or ".." in ref or "//" in ref or ref.endswith(("/", ".lock")):
        raise ToolError(f"{what} must be a branch, tag or commit name (no '..', no spaces), got {ref!r}")
    return ref


def check_path(path: str, allow_empty: bool = False) -> str:
    """A repository-relative file path: no absolute path, no '..', no query or fragment characters."""
    path = path.strip()
    if not path:
        if allow_empty:
            return ""
        raise ToolError("path is required (a file path inside the repository, like internal/routing/cache.go)")
    if path.startswith("/") or "\\" in path or not _PATH_CHARS.match(path):
        raise ToolError(f"path must be relative to the repository root, with plain characters only, got {path!r}")
    if any(part in ("..", ".") for part in path.split("/")):
        raise ToolError(f"path must not contain '.' or '..' segments, got {path!r}")
    return path


def upstream_error(exc: UpstreamError, what: str) -> ToolError:
    """An upstream failure as a clear, masked tool error (404 said plainly)."""
    if exc.status == 404:
        return ToolError(f"{what}: not found (HTTP 404)")
    return ToolError(mask_output(f"{what}: {exc}"))


def short(sha: str | None) -> str:
    return (sha or "")[:7]


def first_line(message: str | None) -> str:
    return (message or "").strip().split("\n", 1)[0][:200]


def login(user: dict[str, Any] | None) -> str:
    return (user or {}).get("login") or (user or {}).get("username") or ""


def looks_binary(data: bytes) -> bool:
    return b"\x00" in data[:8000]


def commit_summary(commit: dict[str, Any]) -> dict[str, Any]:
    """One commit as the fields an engineer reads: short sha, author, date, subject."""
    inner = commit.get("commit") or {}
    author = inner.get("author") or {}
    return {
        "sha": short(commit.get("sha")),
        "author": login(commit.get("author")) or author.get("name", ""),
        "date": author.get("date") or commit.get("created", ""),
        "message": first_line(inner.get("message")),
    }


def repo_summary(repo: dict[str, Any]) -> dict[str, Any]:
    return {
        "repo": repo.get("full_name"),
        "description": repo.get("description", ""),
        "default_branch": repo.get("default_branch"),
        "updated": repo.get("updated_at"),
        "archived": repo.get("archived", False),
    }


def pull_summary(pull: dict[str, Any]) -> dict[str, Any]:
    head, base = pull.get("head") or {}, pull.get("base") or {}
    return {
        "number": pull.get("number"),
        "title": pull.get("title"),
        "author": login(pull.get("user")),
        "state": pull.get("state"),
        "merged": bool(pull.get("merged")),
        "merged_at": pull.get("merged_at"),
        "merged_by": login(pull.get("merged_by")) or None,
        "head": head.get("ref") or head.get("label"),
        "head_sha": short(head.get("sha")),
        "base": base.get("ref") or base.get("label"),
        "updated": pull.get("updated_at"),
    }


def changed_files(compare: dict[str, Any]) -> list[dict[str, str]]:
    """Files changed across a comparison: Gitea lists them per commit; newest status of each file wins."""
    seen: dict[str, str] = {}
    for item in compare.get("files") or []:
        seen.setdefault(item.get("filename", ""), item.get("status", ""))
    for commit in compare.get("commits") or []:
        for item in commit.get("files") or []:
            seen.setdefault(item.get("filename", ""), item.get("status", ""))
    return [{"file": name, "status": status} for name, status in sorted(seen.items()) if name]


def grep_text(path: str, text: str, needle: str, limit: int) -> list[str]:
    """`path:line: text` for lines containing `needle` (case-insensitive), at most `limit`."""
    hits, lowered = [], needle.lower()
    for number, line in enumerate(text.splitlines(), start=1):
        if lowered in line.lower():
            hits.append(f"{path}:{number}: {line.strip()[:200]}")
            if len(hits) >= limit:
                break
    return hits


def build_server(config: ConnectorsConfig) -> MCPServer:
    cfg: GiteaConfig = config.gitea
    if not cfg.url:
        raise ValueError("gitea.url is not set in connectors.yaml: the gitea connector is off")
    client = gitea_client(cfg.url, cfg.token(), cfg.timeout_seconds)
    allowed = cfg.repos
    server = new_server(
        "gitea",
        "Read-only Gitea: repositories, files, code search, commits, pull requests, comparisons of tags. "
        "Only repositories in gitea.repos.allow can be read.",
    )

    async def get_json(path: str, what: str, params: dict[str, Any] | None = None) -> Any:
        try:
            return await client.get_json(path, params)
        except UpstreamError as exc:
            raise upstream_error(exc, what) from exc

    async def get_bytes(path: str, what: str, params: dict[str, Any] | None = None) -> bytes:
        try:
            return await client.get_bytes(path, params)
        except UpstreamError as exc:
            raise upstream_error(exc, what) from exc

    @server.tool(annotations=READ_ONLY, structured_output=False)
    async def list_repos(
        query: Annotated[str, Field(description="Words in the repository name; empty: all readable repositories")] = "",
    ) -> str:
        """Which repositories exist (that this assistant may read)? Name, description, default branch, last update."""
        query = query.strip()[:100]
        found = await get_json("/api/v1/repos/search", "repository search", {"q": query, "limit": 50})
        repos = (found.get("data") or []) if isinstance(found, dict) else (found or [])
        visible = [repo_summary(r) for r in repos if allowed.permits(r.get("full_name", ""))]
        hidden = len(repos) - len(visible)
        result: dict[str, Any] = {"repositories": visible, "count": len(visible)}
        if hidden:
            result["hidden"] = f"{hidden} repositories outside {REPOS_KEY} are not shown"
        return render(result, cfg.max_output_chars)

    @server.tool(annotations=READ_ONLY, structured_output=False)
    async def get_file(
        repo: Repo,
        path: Annotated[str, Field(description="File path inside the repository, e.g. internal/routing/cache.go")],
        ref: Ref = "",
    ) -> str:
        """What does this file say (at this branch, tag or commit)? Returns the file's text, cut if long."""
        owner, name = check_repo(repo, allowed)
        path, ref = check_path(path), check_ref(ref)
        data = await get_bytes(f"/api/v1/repos/{owner}/{name}/raw/{quote(path)}", f"{repo}:{path}", {"ref": ref or None})
        header = f"{repo}:{path}" + (f" @ {ref}" if ref else "") + f" ({len(data)} bytes)\n"
        if looks_binary(data):
            return render(header + "binary file: not shown", cfg.max_output_chars)
        return render(header + data.decode("utf-8", errors="replace"), cfg.max_output_chars)

    @server.tool(annotations=READ_ONLY, structured_output=False)
    async def search_code(
        repo: Repo,
        query: Annotated[str, Field(description="Text to find (case-insensitive substring), e.g. routingCache")],
        ref: Ref = "",
    ) -> str:
        """Where in this repository does this text appear? Returns path:line: text matches.

        Gitea's API v1 has no code search that works on every install (releases up to 1.25 have none;
        the indexer-backed search is optional), so this lists the tree
        (`GET /repos/{o}/{r}/git/trees/{ref}?recursive=true`) and greps text files itself, bounded to
        200 files and 2 MB read, 256 KB per file, 50 matches; the output says when a bound was hit.
        """
        owner, name = check_repo(repo, allowed)
        ref, needle = check_ref(ref), query.strip()
        if not 2 <= len(needle) <= 200:
            raise ToolError("query must be 2 to 200 characters")
        if not ref:
            ref = (await get_json(f"/api/v1/repos/{owner}/{name}", repo)).get("default_branch") or "main"
        tree = await get_json(
            f"/api/v1/repos/{owner}/{name}/git/trees/{quote(ref, safe='')}", f"{repo} tree at {ref}",
            {"recursive": "true", "per_page": 1000},
        )  # fmt: skip
        blobs = [e for e in tree.get("tree") or [] if e.get("type") == "blob"]
        candidates = [e for e in blobs if not e["path"].lower().endswith(_BINARY_SUFFIXES)]
        skipped_big = [e for e in candidates if (e.get("size") or 0) > SEARCH_MAX_FILE_BYTES]
        candidates = [e for e in candidates if (e.get("size") or 0) <= SEARCH_MAX_FILE_BYTES]
        matches: list[str] = []
        read_files = read_bytes = 0
        for entry in candidates:
            if read_files >= SEARCH_MAX_FILES or read_bytes >= SEARCH_MAX_BYTES or len(matches) >= SEARCH_MAX_MATCHES:
                break
            data = await get_bytes(f"/api/v1/repos/{owner}/{name}/raw/{quote(entry['path'])}", entry["path"], {"ref": ref})
            read_files, read_bytes = read_files + 1, read_bytes + len(data)
            if not looks_binary(data):
                text = data.decode("utf-8", errors="replace")
                matches += grep_text(entry["path"], text, needle, SEARCH_MAX_MATCHES - len(matches))
        result: dict[str, Any] = {"repo": repo, "ref": ref, "query": needle, "matches": matches, "files_searched": read_files}
        notes = []
        if read_files < len(candidates):
            notes.append(f"{len(candidates) - read_files} files not searched (bounds reached)")
        if skipped_big:
            notes.append(f"{len(skipped_big)} files over {SEARCH_MAX_FILE_BYTES} bytes skipped")
        if tree.get("truncated"):
            notes.append("the tree listing was truncated by Gitea")
        if notes:
            result["incomplete"] = "; ".join(notes)
        return render(result, cfg.max_output_chars)

    @server.tool(annotations=READ_ONLY, structured_output=False)
    async def commit_history(
        repo: Repo,
        path: Annotated[str, Field(description="Only commits touching this file or folder; empty: all")] = "",
        ref: Ref = "",
        limit: Annotated[int, Field(ge=1, le=50, description="How many commits, newest first")] = 10,
    ) -> str:
        """What changed recently (in this file)? Commits newest first: short sha, author, date, first line."""
        owner, name = check_repo(repo, allowed)
        path, ref = check_path(path, allow_empty=True), check_ref(ref)
        params = {"sha": ref or None, "path": path or None, "limit": limit, "stat": "false", "verification": "false",
                  "files": "false"}  # fmt: skip
        commits = await get_json(f"/api/v1/repos/{owner}/{name}/commits", f"{repo} commits", params)
        result = {"repo": repo, "ref": ref or "default branch", "path": path or None,
                  "commits": [commit_summary(c) for c in (commits or [])[:limit]]}  # fmt: skip
        return render(result, cfg.max_output_chars)

    @server.tool(annotations=READ_ONLY, structured_output=False)
    async def pull_requests(
        repo: Repo,
        state: Annotated[str, Field(description="open, closed or all")] = "open",
    ) -> str:
        """Which pull requests are open (or closed)? Number, title, author, state, merged, head/base branch, updated."""
        owner, name = check_repo(repo, allowed)
        if state not in ("open", "closed", "all"):
            raise ToolError("state must be open, closed or all")
        pulls = await get_json(f"/api/v1/repos/{owner}/{name}/pulls", f"{repo} pulls", {"state": state, "limit": 20})
        result = {"repo": repo, "state": state, "pull_requests": [pull_summary(p) for p in pulls or []]}
        return render(result, cfg.max_output_chars)

    @server.tool(annotations=READ_ONLY, structured_output=False)
    async def compare(
        repo: Repo,
        base: Annotated[str, Field(description="Older tag, branch or commit, e.g. v2.41.0")],
        head: Annotated[str, Field(description="Newer tag, branch or commit, e.g. v2.42.0")],
    ) -> str:
        """What changed between two versions? The commits from base to head and the files they changed."""
        owner, name = check_repo(repo, allowed)
        base, head = check_ref(base, "base"), check_ref(head, "head")
        if not base or not head:
            raise ToolError("base and head are both required")
        basehead = f"{quote(base, safe='')}...{quote(head, safe='')}"
        found = await get_json(f"/api/v1/repos/{owner}/{name}/compare/{basehead}", f"{repo} compare {base}...{head}")
        commits = found.get("commits") or []
        result = {
            "repo": repo, "base": base, "head": head,
            "total_commits": found.get("total_commits", len(commits)),
            "commits": [commit_summary(c) for c in commits[:30]],
            "changed_files": changed_files(found),
        }  # fmt: skip
        return render(result, cfg.max_output_chars)

    return server
