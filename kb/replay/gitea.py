"""Replay of Gitea's API v1 (and Gitea Actions) from `examples/live_systems/gitea/`.

Layout: `repos.json` (Repository objects) and, per repository, `repos/<owner>/<name>/` with
`commits.json` (newest first, one line of history), `branches.json`, `tags.json`, `pulls.json`,
`actions_runs.json`, `actions_jobs.json`, `logs/<job id>.log`, and the files of a ref under
`tree/<ref>/`. Trees, raw files, filtered commit lists and comparisons are computed from those
records the way Gitea computes them from git; anything else is Gitea's 404 JSON.
"""

from __future__ import annotations

import hashlib
import json
import re
from pathlib import Path
from typing import Any
from urllib.parse import unquote

from kb.replay.server import Reply

_REPO_PATH = re.compile(r"^/api/v1/repos/(?P<owner>[^/]+)/(?P<name>[^/]+)(?P<rest>/.*)?$")


def not_found(path: str) -> Reply:
    return Reply.json(
        {"errors": None, "message": "The target couldn't be found.", "url": f"https://gitea.paylane.internal{path}"}, 404
    )


def load(path: Path) -> Any:
    return json.loads(path.read_text())


def repo_dir(root: Path, owner: str, name: str) -> Path | None:
    folder = (root / "repos" / owner / name).resolve()
    inside = folder.is_relative_to((root / "repos").resolve())
    return folder if inside and folder.is_dir() else None


def resolve_sha(folder: Path, ref: str) -> str | None:
    """A branch, tag, full or short commit sha as a full sha, from the recorded branches, tags and commits."""
    for branch in load(folder / "branches.json"):
        if branch["name"] == ref:
            return str(branch["commit"]["id"])
    for tag in load(folder / "tags.json"):
        if tag["name"] == ref:
            return str(tag["commit"]["sha"])
    if len(ref) >= 7:
        for commit in load(folder / "commits.json"):
            if commit["sha"].startswith(ref):
                return str(commit["sha"])
    return None


def tree_root(folder: Path, ref: str) -> Path | None:
    """The recorded files of `ref`: its own folder, or the folder of a ref that names the same commit."""
    ref = ref or "main"
    trees = folder / "tree"
    if "/" not in ref and (trees / ref).is_dir():
        return trees / ref
    sha = resolve_sha(folder, ref)
    if sha is None:
        return None
    for candidate in sorted(p for p in trees.iterdir() if p.is_dir()):
        if resolve_sha(folder, candidate.name) == sha:
            return candidate
    return None


def blob_sha(data: bytes) -> str:
    """The git blob id, as Gitea reports it in a tree."""
    return hashlib.sha1(b"blob %d\0" % len(data) + data).hexdigest()


def tree_entry(full: str, rel: str, item: Path) -> dict[str, Any]:
    """One GitEntry: a blob with its real git id, or a folder (its id stands in for git's tree id)."""
    api = f"https://gitea.paylane.internal/api/v1/repos/{full}/git"
    if item.is_dir():
        sha = hashlib.sha1(rel.encode()).hexdigest()
        return {"path": rel, "mode": "040000", "type": "tree", "size": 0, "sha": sha, "url": f"{api}/trees/{sha}"}
    data = item.read_bytes()
    sha = blob_sha(data)
    return {"path": rel, "mode": "100644", "type": "blob", "size": len(data), "sha": sha, "url": f"{api}/blobs/{sha}"}


def git_tree(full: str, folder: Path, ref: str, recursive: bool, path: str) -> Reply:
    base = tree_root(folder, ref)
    if base is None:
        return not_found(path)
    items = sorted(base.rglob("*") if recursive else base.iterdir())
    entries = [tree_entry(full, item.relative_to(base).as_posix(), item) for item in items]
    sha = resolve_sha(folder, ref or "main") or ref
    url = f"https://gitea.paylane.internal/api/v1/repos/{full}/git/trees/{sha}"
    return Reply.json({"sha": sha, "url": url, "tree": entries, "truncated": False, "page": 1, "total_count": len(entries)})


def raw_file(folder: Path, file_path: str, ref: str, path: str) -> Reply:
    base = tree_root(folder, ref)
    if base is None:
        return not_found(path)
    target = (base / file_path).resolve()
    if not target.is_relative_to(base.resolve()) or not target.is_file():
        return not_found(path)
    return Reply(200, target.read_bytes(), "text/plain; charset=utf-8")


def commit_list(folder: Path, query: dict[str, list[str]], path: str) -> Reply:
    commits = load(folder / "commits.json")
    sha_ref = query.get("sha", [""])[0]
    if sha_ref:
        sha = resolve_sha(folder, sha_ref)
        index = next((i for i, c in enumerate(commits) if c["sha"] == sha), None)
        if index is None:
            return not_found(path)
        commits = commits[index:]
    file_path = query.get("path", [""])[0].strip("/")
    if file_path:
        commits = [
            c for c in commits if any(f["filename"] == file_path or f["filename"].startswith(file_path + "/") for f in c["files"])
        ]
    limit = int(query.get("limit", ["30"])[0] or 30)
    page = int(query.get("page", ["1"])[0] or 1)
    commits = commits[(page - 1) * limit : page * limit]
    if query.get("files", ["true"])[0] == "false":
        commits = [{**c, "files": None} for c in commits]
    if query.get("stat", ["true"])[0] == "false":
        commits = [{**c, "stats": None} for c in commits]
    return Reply.json(commits)


def compare(folder: Path, basehead: str, path: str) -> Reply:
    base, sep, head = basehead.partition("...")
    if not sep:
        base, sep, head = basehead.partition("..")
    commits = load(folder / "commits.json")
    base_sha, head_sha = resolve_sha(folder, base), resolve_sha(folder, head)
    shas = [c["sha"] for c in commits]
    if not sep or base_sha not in shas or head_sha not in shas:
        return not_found(path)
    between = commits[shas.index(head_sha) : shas.index(base_sha)]
    return Reply.json({"total_commits": len(between), "commits": between})


def pulls(folder: Path, query: dict[str, list[str]]) -> Reply:
    state = query.get("state", ["open"])[0]
    found = [p for p in load(folder / "pulls.json") if state == "all" or p["state"] == state]
    limit = int(query.get("limit", ["30"])[0] or 30)
    return Reply.json(found[:limit])


def action_runs(folder: Path, query: dict[str, list[str]]) -> Reply:
    found = load(folder / "actions_runs.json")
    limit = int(query.get("limit", ["30"])[0] or 30)
    return Reply.json({"workflow_runs": found["workflow_runs"][:limit], "total_count": found["total_count"]})


def run_jobs(folder: Path, run_id: int, path: str) -> Reply:
    runs = load(folder / "actions_runs.json")["workflow_runs"]
    if not any(r["id"] == run_id for r in runs):
        return Reply.json({"errors": None, "message": "Run not found", "url": ""}, 404)
    jobs = [j for j in load(folder / "actions_jobs.json") if j["run_id"] == run_id]
    return Reply.json({"jobs": jobs, "total_count": len(jobs)})


def job_log(folder: Path, job_id: str, path: str) -> Reply:
    log = folder / "logs" / f"{job_id}.log"
    return Reply.text(log.read_text()) if job_id.isdigit() and log.is_file() else not_found(path)


def search_repos(root: Path, query: dict[str, list[str]]) -> Reply:
    words = query.get("q", [""])[0].lower()
    repos = [r for r in load(root / "repos.json") if words in r["full_name"].lower() or words in r["description"].lower()]
    limit = int(query.get("limit", ["10"])[0] or 10)
    return Reply.json({"ok": True, "data": repos[:limit]})


def repo_route(root: Path, owner: str, name: str, rest: str, query: dict[str, list[str]], path: str) -> Reply:
    folder = repo_dir(root, owner, name)
    if folder is None:
        return not_found(path)
    full = f"{owner}/{name}"
    arg = lambda key: query.get(key, [""])[0]  # noqa: E731
    if rest in ("", "/"):
        repo = next((r for r in load(root / "repos.json") if r["full_name"] == full), None)
        return Reply.json(repo) if repo else not_found(path)
    if rest.startswith("/raw/"):
        return raw_file(folder, unquote(rest.removeprefix("/raw/")), arg("ref"), path)
    if rest.startswith("/git/trees/"):
        return git_tree(full, folder, unquote(rest.removeprefix("/git/trees/")), arg("recursive") == "true", path)
    if rest == "/commits":
        return commit_list(folder, query, path)
    if rest.startswith("/compare/"):
        return compare(folder, unquote(rest.removeprefix("/compare/")), path)
    if rest == "/pulls":
        return pulls(folder, query)
    if rest == "/branches":
        return Reply.json(load(folder / "branches.json"))
    if rest == "/tags":
        return Reply.json(load(folder / "tags.json"))
    if rest == "/actions/runs":
        return action_runs(folder, query)
    if match := re.fullmatch(r"/actions/runs/(\d+)/jobs", rest):
        return run_jobs(folder, int(match.group(1)), path)
    if match := re.fullmatch(r"/actions/jobs/([^/]+)/logs", rest):
        return job_log(folder, match.group(1), path)
    return not_found(path)


def route(root: Path, path: str, query: dict[str, list[str]]) -> Reply:
    if path == "/api/v1/repos/search":
        return search_repos(root, query)
    if path == "/api/v1/version":
        return Reply.json({"version": "1.24.6"})
    match = _REPO_PATH.match(path)
    if match:
        return repo_route(root, unquote(match["owner"]), unquote(match["name"]), match["rest"] or "", query, path)
    return not_found(path)
