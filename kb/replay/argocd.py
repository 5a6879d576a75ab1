"""Replay of ArgoCD's API v1 from `examples/live_systems/argocd/`: `applications.json` (an
ApplicationList) and `resource-tree/<name>.json` (ApplicationTree). Anything else answers ArgoCD's
gRPC-gateway 404 JSON.
"""

from __future__ import annotations

import json
import re
from pathlib import Path
from typing import Any

from kb.replay.server import Reply

_APP = re.compile(r"^/api/v1/applications/(?P<name>[a-z0-9][a-z0-9.-]*)(?P<rest>/resource-tree)?$")


def not_found(what: str) -> Reply:
    message = f'applications.argoproj.io "{what}" not found'
    return Reply.json({"error": message, "code": 5, "message": message}, 404)


def applications(root: Path) -> dict[str, Any]:
    return json.loads((root / "applications.json").read_text())  # type: ignore[no-any-return]


def route(root: Path, path: str, query: dict[str, list[str]]) -> Reply:
    listing = applications(root)
    if path == "/api/v1/applications":
        projects = set(query.get("projects", []) + query.get("project", []))
        items = [a for a in listing["items"] if not projects or a["spec"]["project"] in projects]
        return Reply.json({**listing, "items": items})
    match = _APP.match(path)
    if not match:
        return Reply.json({"error": "Not Found", "code": 5, "message": "Not Found"}, 404)
    name = match["name"]
    app = next((a for a in listing["items"] if a["metadata"]["name"] == name), None)
    if app is None:
        return not_found(name)
    if not match["rest"]:
        return Reply.json(app)
    tree = root / "resource-tree" / f"{name}.json"
    return Reply.json(json.loads(tree.read_text())) if tree.is_file() else Reply.json({"nodes": []})
