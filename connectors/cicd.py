"""CI/CD connector: ArgoCD applications (sync, health, deploy history, resources) and Gitea Actions runs and logs.

ArgoCD applications are shown only when their destination namespace passes `kubernetes.namespaces`
(an app deploying into kube-system is hidden from lists and refused by name). Builds are read only
for repositories in `cicd.repos` (unset: `gitea.repos`). Tools of a backend without a URL are not
registered. Nothing here can sync, refresh or rerun: the clients send GET only, and no tool passes
ArgoCD's `refresh` query.
"""

from __future__ import annotations

import json
import re
from typing import Annotated, Any
from urllib.parse import quote

from mcp.server import MCPServer
from mcp.server.mcpserver.exceptions import ToolError
from pydantic import Field

from connectors.base import READ_ONLY, Refused, new_server, render
from connectors.config import AllowDeny, CicdConfig, ConnectorsConfig
from connectors.gitea import Repo, check_repo, first_line, gitea_client, short, upstream_error
from connectors.http import ReadOnlyClient, UpstreamError

NAMESPACES_KEY = "kubernetes.namespaces"
MAX_TAIL = 1000
_LOG_TIMESTAMP = re.compile(r"^\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d(?:\.\d+)?Z ", re.M)
_APP_NAME_CHARS = set("abcdefghijklmnopqrstuvwxyz0123456789-.")

AppName = Annotated[str, Field(description="ArgoCD application name, e.g. gateway-core")]


def check_app_name(name: str) -> str:
    """An ArgoCD application name is a Kubernetes resource name: lowercase, digits, '-' and '.'."""
    name = name.strip()
    if not name or len(name) > 253 or not set(name) <= _APP_NAME_CHARS or ".." in name:
        raise ToolError(f"name must be an ArgoCD application name (lowercase letters, digits, '-', '.'), got {name!r}")
    return name


def destination_namespace(app: dict[str, Any]) -> str:
    return ((app.get("spec") or {}).get("destination") or {}).get("namespace") or ""


def app_sources(app: dict[str, Any]) -> list[dict[str, Any]]:
    """Single-source (`spec.source`) and multi-source (`spec.sources`) applications alike."""
    spec = app.get("spec") or {}
    return spec.get("sources") or ([spec["source"]] if spec.get("source") else [])


def app_revision(status: dict[str, Any]) -> str:
    sync = status.get("sync") or {}
    return short(sync.get("revision") or next(iter(sync.get("revisions") or []), ""))


def app_summary(app: dict[str, Any]) -> dict[str, Any]:
    """One application in a line an engineer reads: where it deploys, sync, health, revision, last operation."""
    status = app.get("status") or {}
    operation = status.get("operationState") or {}
    return {
        "name": (app.get("metadata") or {}).get("name"),
        "project": (app.get("spec") or {}).get("project"),
        "namespace": destination_namespace(app),
        "sync": (status.get("sync") or {}).get("status"),
        "health": (status.get("health") or {}).get("status"),
        "revision": app_revision(status),
        "target_revision": [s.get("targetRevision") for s in app_sources(app)],
        "last_operation": operation.get("phase"),
        "last_operation_finished": operation.get("finishedAt"),
    }


def history_entry(entry: dict[str, Any]) -> dict[str, Any]:
    """A deploy: id, when, which revision(s) and target revision(s) (multi-source apps list several)."""
    revisions = [entry["revision"]] if entry.get("revision") else list(entry.get("revisions") or [])
    sources = [entry["source"]] if entry.get("source") else list(entry.get("sources") or [])
    return {
        "id": entry.get("id"),
        "deployed_at": entry.get("deployedAt"),
        "revision": [short(r) for r in revisions],
        "target_revision": [s.get("targetRevision") for s in sources],
        "repo": [s.get("repoURL") for s in sources],
    }


def app_detail(app: dict[str, Any]) -> dict[str, Any]:
    status = app.get("status") or {}
    operation = status.get("operationState") or {}
    health = status.get("health") or {}
    unhealthy = [
        {"kind": r.get("kind"), "name": r.get("name"), "health": (r.get("health") or {}).get("status"),
         "message": (r.get("health") or {}).get("message")}
        for r in status.get("resources") or []
        if (r.get("health") or {}).get("status") not in (None, "Healthy")
    ]  # fmt: skip
    history = sorted(status.get("history") or [], key=lambda h: h.get("id") or 0, reverse=True)
    return {
        **app_summary(app),
        "health_message": health.get("message"),
        "operation_message": operation.get("message"),
        "conditions": [
            {"type": c.get("type"), "message": c.get("message"), "since": c.get("lastTransitionTime")}
            for c in status.get("conditions") or []
        ],
        "unhealthy_resources": unhealthy,
        "history_newest_first": [history_entry(h) for h in history[:10]],
        "images": (status.get("summary") or {}).get("images", []),
    }


def tree_node(node: dict[str, Any]) -> dict[str, Any]:
    health = node.get("health") or {}
    item = {"kind": node.get("kind"), "name": node.get("name"), "namespace": node.get("namespace", ""),
            "health": health.get("status")}  # fmt: skip
    if health.get("message"):
        item["message"] = health["message"]
    return item


def run_summary(run: dict[str, Any]) -> dict[str, Any]:
    return {
        "id": run.get("id"),
        "run_number": run.get("run_number"),
        "title": first_line(run.get("display_title")),
        "event": run.get("event"),
        "branch": run.get("head_branch"),
        "sha": short(run.get("head_sha")),
        "status": run.get("status"),
        "conclusion": run.get("conclusion"),
        "started": run.get("started_at"),
        "completed": run.get("completed_at"),
    }


def job_summary(job: dict[str, Any]) -> dict[str, Any]:
    failed_steps = [s.get("name") for s in job.get("steps") or [] if s.get("conclusion") == "failure"]
    return {"id": job.get("id"), "name": job.get("name"), "status": job.get("status"),
            "conclusion": job.get("conclusion"), "failed_steps": failed_steps}  # fmt: skip


def pick_job(jobs: list[dict[str, Any]]) -> dict[str, Any] | None:
    """The job whose log answers "why did it fail": the first failed one, else the last."""
    return next((j for j in jobs if j.get("conclusion") == "failure"), jobs[-1] if jobs else None)


def strip_timestamps(log: str) -> str:
    """Gitea prefixes every log line with an RFC 3339 timestamp; it costs tokens and says little."""
    return _LOG_TIMESTAMP.sub("", log)


def tail_lines(text: str, tail: int) -> tuple[str, int]:
    lines = text.splitlines()
    return "\n".join(lines[-tail:]), max(0, len(lines) - tail)


async def fetch_json(client: ReadOnlyClient, path: str, what: str, params: dict[str, Any] | None = None) -> Any:
    try:
        return await client.get_json(path, params)
    except UpstreamError as exc:
        raise upstream_error(exc, what) from exc


async def fetch_text(client: ReadOnlyClient, path: str, what: str) -> str:
    try:
        return await client.get_text(path)
    except UpstreamError as exc:
        raise upstream_error(exc, what) from exc


def register_argocd(server: MCPServer, cfg: CicdConfig, url: str, namespaces: AllowDeny) -> None:
    argocd = ReadOnlyClient(url, cfg.argocd_token(), cfg.timeout_seconds)

    async def allowed_app(name: str) -> dict[str, Any]:
        """The application, or Refused when it deploys outside the namespaces this assistant may read."""
        app = await fetch_json(argocd, f"/api/v1/applications/{quote(name, safe='')}", f"ArgoCD application {name}")
        namespace = destination_namespace(app)
        if not namespaces.permits(namespace):
            raise Refused(
                f"ArgoCD application {name!r} deploys into namespace {namespace!r}, which is outside "
                f"this connector's allowlist ({NAMESPACES_KEY}); nothing about it is shown"
            )
        return app

    @server.tool(annotations=READ_ONLY, structured_output=False)
    async def argocd_apps(
        project: Annotated[str, Field(description="Only applications of this ArgoCD project; empty: all")] = "",
    ) -> str:
        """Which ArgoCD applications are out of sync or unhealthy? Each app: namespace, sync, health, revision, last operation."""
        project = project.strip()
        if project and not set(project) <= _APP_NAME_CHARS:
            raise ToolError(f"project must be an ArgoCD project name, got {project!r}")
        found = await fetch_json(argocd, "/api/v1/applications", "ArgoCD applications", {"projects": project or None})
        items = found.get("items") or []
        visible = [app_summary(a) for a in items if namespaces.permits(destination_namespace(a))]
        result: dict[str, Any] = {"applications": visible, "count": len(visible)}
        if len(items) > len(visible):
            result["hidden"] = f"{len(items) - len(visible)} applications deploying outside {NAMESPACES_KEY} are not shown"
        return render(result, cfg.max_output_chars)

    @server.tool(annotations=READ_ONLY, structured_output=False)
    async def argocd_app(name: AppName) -> str:
        """Is this application synced and healthy, and what was deployed when? Status, conditions, deploy history newest first."""
        app = await allowed_app(check_app_name(name))
        return render(app_detail(app), cfg.max_output_chars)

    @server.tool(annotations=READ_ONLY, structured_output=False)
    async def argocd_resource_tree(name: AppName) -> str:
        """Which resources of this application are unhealthy? Every node: kind, name, namespace, health."""
        name = check_app_name(name)
        await allowed_app(name)  # the namespace rule is checked before the tree is asked for
        tree = await fetch_json(argocd, f"/api/v1/applications/{quote(name, safe='')}/resource-tree", f"{name} resource tree")
        nodes = [n for n in tree.get("nodes") or [] if not n.get("namespace") or namespaces.permits(n["namespace"])]
        order = {"Degraded": 0, "Missing": 1, "Progressing": 2, "Unknown": 3, "Suspended": 4, "Healthy": 5, None: 6}
        nodes.sort(key=lambda n: (order.get((n.get("health") or {}).get("status"), 6), n.get("kind", ""), n.get("name", "")))
        counts: dict[str, int] = {}
        for node in nodes:
            status = (node.get("health") or {}).get("status") or "none"
            counts[status] = counts.get(status, 0) + 1
        return render(
            {"application": name, "health_counts": counts, "nodes": [tree_node(n) for n in nodes]}, cfg.max_output_chars
        )


def register_actions(server: MCPServer, cfg: CicdConfig, url: str, repos: AllowDeny, repos_key: str) -> None:
    ci = gitea_client(url, cfg.token(), cfg.timeout_seconds)

    async def run_jobs(owner: str, name: str, repo: str, run: int) -> tuple[int, list[dict[str, Any]]]:
        """The jobs of run `run`: an id, or else a run number (#513), which people and models quote more often."""
        path = f"/api/v1/repos/{owner}/{name}/actions/runs/{{}}/jobs"
        try:
            found = await ci.get_json(path.format(run))
        except UpstreamError as exc:
            if exc.status != 404:
                raise upstream_error(exc, f"{repo} run {run} jobs") from exc
            runs = await fetch_json(ci, f"/api/v1/repos/{owner}/{name}/actions/runs", f"{repo} action runs", {"limit": 50})
            match = next((r for r in runs.get("workflow_runs") or [] if r.get("run_number") == run), None)
            if match is None:
                raise ToolError(f"{repo} has no run with id or number {run} among its last 50 runs") from exc
            run = int(match["id"])
            found = await fetch_json(ci, path.format(run), f"{repo} run {run} jobs")
        return run, found.get("jobs") or found.get("workflow_jobs") or []

    @server.tool(annotations=READ_ONLY, structured_output=False)
    async def build_runs(
        repo: Repo,
        limit: Annotated[int, Field(ge=1, le=50, description="How many runs, newest first")] = 10,
    ) -> str:
        """Did the recent builds of this repository pass? Gitea Actions runs: id, number, title, commit, status, conclusion."""
        owner, name = check_repo(repo, repos, repos_key)
        found = await fetch_json(ci, f"/api/v1/repos/{owner}/{name}/actions/runs", f"{repo} action runs", {"limit": limit})
        runs = found.get("workflow_runs") or []
        result = {"repo": repo, "total": found.get("total_count", len(runs)), "runs": [run_summary(r) for r in runs[:limit]]}
        return render(result, cfg.max_output_chars)

    @server.tool(annotations=READ_ONLY, structured_output=False)
    async def build_logs(
        repo: Repo,
        job_id: Annotated[int, Field(ge=0, description="Job id; 0: take the failed job of run_id")] = 0,
        run_id: Annotated[
            int, Field(ge=0, description="Run id from build_runs (or its run number); 0: the newest failed run")
        ] = 0,
        tail: Annotated[int, Field(ge=1, le=MAX_TAIL, description="Last lines of the log to show")] = 200,
    ) -> str:
        """Why did this build fail? The last lines of a job's log (secrets masked); with run_id, the run's jobs too;
        with neither, the newest failed run of the repository."""
        owner, name = check_repo(repo, repos, repos_key)
        result: dict[str, Any] = {"repo": repo}
        if not job_id and not run_id:
            found = await fetch_json(ci, f"/api/v1/repos/{owner}/{name}/actions/runs", f"{repo} action runs", {"limit": 20})
            runs = found.get("workflow_runs") or []
            newest = next((r for r in runs if r.get("conclusion") == "failure"), runs[0] if runs else None)
            if newest is None:
                return render({**result, "log": "this repository has no build runs"}, cfg.max_output_chars)
            run_id = int(newest["id"])
            result["run"] = run_summary(newest)
        if run_id:
            run_id, jobs = await run_jobs(owner, name, repo, run_id)
            result.update(run_id=run_id, jobs=[job_summary(j) for j in jobs])
            if not job_id:
                picked = pick_job(jobs)
                if picked is None:
                    return render({**result, "log": "this run has no jobs"}, cfg.max_output_chars)
                job_id = int(picked["id"])
        log = await fetch_text(ci, f"/api/v1/repos/{owner}/{name}/actions/jobs/{job_id}/logs", f"{repo} job {job_id} log")
        text, cut = tail_lines(strip_timestamps(log), tail)
        result.update(job_id=job_id, lines_before_tail=cut)
        # The log goes out as plain lines after a JSON header: escaped newlines would cost the model twice the tokens.
        return render(json.dumps(result, ensure_ascii=False) + "\n--- log (last lines) ---\n" + text, cfg.max_output_chars)


def build_server(config: ConnectorsConfig) -> MCPServer:
    cfg = config.cicd
    if not cfg.enabled:
        raise ValueError("cicd.url and cicd.argocd_url are both unset in connectors.yaml: the cicd connector is off")
    repos, repos_key = (cfg.repos, "cicd.repos") if cfg.repos is not None else (config.gitea.repos, "gitea.repos.allow")
    server = new_server(
        "cicd",
        "Read-only CI/CD: ArgoCD applications (sync, health, deploy history, resource tree) and Gitea Actions "
        "build runs and job logs. Apps outside kubernetes.namespaces and repositories outside the repo allowlist are refused.",
    )
    if cfg.argocd_url:
        register_argocd(server, cfg, cfg.argocd_url, config.kubernetes.namespaces)
    if cfg.url:
        register_actions(server, cfg, cfg.url, repos, repos_key)
    return server
