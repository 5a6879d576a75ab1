"""Docker Swarm, read-only: services, stacks, task health, service logs and nodes from the Docker Engine API.

Reads go through `ReadOnlyClient` (GET only) to `swarm.url`: the daemon's unix socket or tcp://host:port.
The API version is negotiated once from `GET /version` (the daemon's own version, capped at the newest one
whose shapes this module was written against) so old daemons (20.10: 1.41) and new ones (29: min 1.44) both answer.
Environment values never leave: env lists become `NAME=[MASKED:env]`, and every output passes `render`.
"""

from __future__ import annotations

import json
import re
import time
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from typing import Annotated, Any

from mcp.server import MCPServer
from mcp.server.mcpserver.exceptions import ToolError
from pydantic import Field

from connectors.base import READ_ONLY, new_server, render
from connectors.config import ConnectorsConfig, SwarmConfig
from connectors.http import ReadOnlyClient, UpstreamError
from connectors.masking import mask_env, mask_output

STACK_LABEL = "com.docker.stack.namespace"  # what `docker stack deploy` puts on every service of a stack
NEWEST_API = (1, 47)
HEALTH_TASKS = 20  # most recent tasks service_health shows; Docker keeps 5 per slot by default anyway
_NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.-]{0,127}$")  # service names/IDs and stack names
_FRAME_HEADER = 8  # multiplexed stream: [stream, 0, 0, 0, size(4, big-endian)] then `size` bytes
_STREAMS = {0: "stdin", 1: "stdout", 2: "stderr"}
_EXITED = {"complete", "failed", "shutdown", "rejected", "orphaned", "remove"}  # task states after the container ended

INSTRUCTIONS = (
    "Read-only Docker Swarm: list_services and stacks for what runs, service_health for failing tasks "
    "(states, errors, exit codes), service_logs for recent log lines, service_detail for the spec, "
    "list_nodes for the cluster. Nothing here can change the swarm."
)

ServiceArg = Annotated[str, Field(description="Service name or ID, as list_services shows it (e.g. edge-proxy).")]


# --- talking to the daemon ---------------------------------------------------------------------------


class Docker:
    """GETs under the negotiated `/v1.xx` prefix, with Docker's errors turned into messages for the model."""

    def __init__(self, client: ReadOnlyClient, prefix: str) -> None:
        self._client = client
        self._prefix = prefix

    async def json(self, path: str, params: dict[str, Any] | None = None, missing: str | None = None) -> Any:
        try:
            return await self._client.get_json(self._prefix + path, params)
        except UpstreamError as exc:
            raise _tool_error(exc, missing) from exc

    async def raw(self, path: str, params: dict[str, Any] | None = None, missing: str | None = None) -> bytes:
        try:
            return await self._client.get_bytes(self._prefix + path, params)
        except UpstreamError as exc:
            raise _tool_error(exc, missing) from exc


def _tool_error(exc: UpstreamError, missing: str | None) -> ToolError:
    if exc.status == 404 and missing:
        return ToolError(f"{missing} not found; list_services shows the names")
    if exc.status == 503:
        return ToolError(f"Docker is not a swarm manager (or the swarm is down): {exc}")
    return ToolError(f"Docker API: {exc}")


def _api_prefix(version: str) -> str:
    """`/v1.41` for a daemon at 1.41; never newer than NEWEST_API (later shapes were not checked here)."""
    try:
        parsed = tuple(int(part) for part in version.split("."))[:2]
    except ValueError:
        parsed = NEWEST_API
    major, minor = min(parsed, NEWEST_API)  # type: ignore[misc]
    return f"/v{major}.{minor}"


@asynccontextmanager
async def _docker(cfg: SwarmConfig, negotiated: dict[str, str]) -> AsyncIterator[Docker]:
    """A client for one tool call (httpx clients are tied to their event loop); the version is asked once."""
    assert cfg.url  # build_server refuses to start without one
    client = ReadOnlyClient(cfg.url, cfg.token(), cfg.timeout_seconds)
    try:
        if "prefix" not in negotiated:
            try:
                version = await client.get_json("/version")
            except UpstreamError as exc:
                raise ToolError(f"cannot reach Docker at {cfg.url}: {exc}") from exc
            negotiated["prefix"] = _api_prefix(str(version.get("ApiVersion", "")))
        yield Docker(client, negotiated["prefix"])
    finally:
        await client.aclose()


def _check_name(value: str, what: str) -> str:
    value = value.strip()
    if not _NAME.match(value):
        raise ToolError(f"{what} {value!r} is not a valid Docker name (letters, digits, '_', '.', '-')")
    return value


def _filters(**values: list[str]) -> dict[str, str]:
    """Docker's `filters` query parameter: a JSON map of lists (values of one key are OR-ed)."""
    return {"filters": json.dumps({key.replace("_", "-"): value for key, value in values.items() if value})}


# --- shaping Docker's objects ------------------------------------------------------------------------


def _short_time(ts: str | None) -> str | None:
    """`2026-12-01T08:24:28.747672203Z` → `2026-12-01T08:24:28Z`; Go's zero time → None."""
    if not ts or ts.startswith("0001-"):
        return None
    return ts[:19] + "Z"


def _image(spec: dict[str, Any]) -> str:
    """The image without its pinned digest (`name:tag@sha256:…` → `name:tag`): the digest means nothing to a reader."""
    return str(spec.get("TaskTemplate", {}).get("ContainerSpec", {}).get("Image", "")).split("@", 1)[0]


def _mode(spec: dict[str, Any]) -> tuple[str, int | None]:
    """The service mode and its desired replica count (None where the mode has none: global ones)."""
    mode = spec.get("Mode", {})
    if "Replicated" in mode:
        return "replicated", int(mode["Replicated"].get("Replicas", 0))
    if "ReplicatedJob" in mode:
        return "replicated-job", int(mode["ReplicatedJob"].get("TotalCompletions", 1))
    if "GlobalJob" in mode:
        return "global-job", None
    return "global", None


def _update_status(service: dict[str, Any]) -> dict[str, Any] | None:
    status = service.get("UpdateStatus")
    if not status:
        return None
    return {
        "state": status.get("State"),
        "message": status.get("Message"),
        "started": _short_time(status.get("StartedAt")),
        "completed": _short_time(status.get("CompletedAt")),
    }


def _ports(service: dict[str, Any]) -> list[str]:
    ports = service.get("Endpoint", {}).get("Ports") or []
    return [f"{p.get('PublishedPort')}->{p.get('TargetPort')}/{p.get('Protocol', 'tcp')}" for p in ports]


def _task_name(task: dict[str, Any], service_name: str) -> str:
    """`edge-proxy.1` as the CLI prints it (replicated: slot; global: the node)."""
    if task.get("Slot"):
        return f"{service_name}.{task['Slot']}"
    return f"{service_name}.{str(task.get('NodeID', ''))[:12]}"


def _desired_count(spec: dict[str, Any], tasks: list[dict[str, Any]]) -> int:
    """Replicas for replicated services; for global ones, the tasks the orchestrator wants running."""
    _, replicas = _mode(spec)
    if replicas is not None:
        return replicas
    return sum(1 for t in tasks if t.get("DesiredState") == "running")


def _nanos_to_seconds(value: int | None) -> float | None:
    return None if value is None else value / 1e9


def _resources(resources: dict[str, Any]) -> dict[str, Any]:
    """Limits and reservations as CPUs and MiB (Docker gives nano-CPUs and bytes)."""
    shaped: dict[str, Any] = {}
    for key in ("Limits", "Reservations"):
        part = resources.get(key) or {}
        values = {}
        if part.get("NanoCPUs"):
            values["cpus"] = part["NanoCPUs"] / 1e9
        if part.get("MemoryBytes"):
            values["memory_mib"] = round(part["MemoryBytes"] / 2**20)
        if part.get("Pids"):
            values["pids"] = part["Pids"]
        if values:
            shaped[key.lower()] = values
    return shaped


def _service_summary(service: dict[str, Any], active: list[dict[str, Any]]) -> dict[str, Any]:
    """One line of list_services; `active` are the service's tasks whose desired state is running."""
    spec = service.get("Spec", {})
    mode, _ = _mode(spec)
    summary: dict[str, Any] = {
        "name": spec.get("Name"),
        "stack": (spec.get("Labels") or {}).get(STACK_LABEL),
        "image": _image(spec),
        "mode": mode,
        "desired": _desired_count(spec, active),
        "running": sum(1 for t in active if t.get("Status", {}).get("State") == "running"),
    }
    if ports := _ports(service):
        summary["ports"] = ports
    if update := _update_status(service):
        summary["update"] = update
    return summary


def _service_detail(service: dict[str, Any]) -> dict[str, Any]:
    spec = service.get("Spec", {})
    template = spec.get("TaskTemplate", {})
    container = template.get("ContainerSpec", {})
    mode, replicas = _mode(spec)
    restart = template.get("RestartPolicy") or {}
    update = spec.get("UpdateConfig") or {}
    command = " ".join([*(container.get("Command") or []), *(container.get("Args") or [])])
    detail: dict[str, Any] = {
        "name": spec.get("Name"),
        "id": service.get("ID", "")[:12],
        "stack": (spec.get("Labels") or {}).get(STACK_LABEL),
        "image": _image(spec),
        "mode": mode,
        "replicas": replicas,
        # Masked here, before JSON escaping: quotes in a shell command become `\"`, which the masker would eat.
        "command": mask_output(command[:300]) or None,
        "env": mask_env(container.get("Env")),
        "secrets": [s.get("SecretName") for s in container.get("Secrets") or []],
        "labels": spec.get("Labels") or {},
        "resources": _resources(template.get("Resources") or {}),
        "restart_policy": _compact(
            {
                "condition": restart.get("Condition"),
                "delay_s": _nanos_to_seconds(restart.get("Delay")),
                "max_attempts": restart.get("MaxAttempts"),
                "window_s": _nanos_to_seconds(restart.get("Window")),
            }
        )
        if restart
        else None,
        "update_config": _compact(
            {
                "parallelism": update.get("Parallelism"),
                "delay_s": _nanos_to_seconds(update.get("Delay")),
                "failure_action": update.get("FailureAction"),
                "order": update.get("Order"),
                "monitor_s": _nanos_to_seconds(update.get("Monitor")),
            }
        )
        if update
        else None,
        "placement": (template.get("Placement") or {}).get("Constraints") or [],
        "ports": _ports(service),
        "update_status": _update_status(service),
        "created": _short_time(service.get("CreatedAt")),
        "updated": _short_time(service.get("UpdatedAt")),
    }
    if previous := service.get("PreviousSpec"):
        detail["previous_image"] = _image(previous)  # what a rollback would go back to
    if health := container.get("Healthcheck"):
        detail["healthcheck"] = " ".join(health.get("Test") or [])
    return _compact(detail)


def _compact(values: dict[str, Any]) -> dict[str, Any]:
    """Without the keys Docker left unset: fewer tokens for the model, nothing it could read lost."""
    return {key: value for key, value in values.items() if value not in (None, [], {})}


def _task_row(task: dict[str, Any], service_name: str, nodes: dict[str, str]) -> dict[str, Any]:
    status = task.get("Status", {})
    row: dict[str, Any] = {
        "task": _task_name(task, service_name),
        "id": task.get("ID", "")[:12],
        "node": nodes.get(task.get("NodeID", ""), task.get("NodeID", "")[:12] or None),
        "desired": task.get("DesiredState"),
        "state": status.get("State"),
        "since": _short_time(status.get("Timestamp")),
        "message": status.get("Message"),
        "error": status.get("Err"),
        # Docker reports ExitCode 0 for a container still running; only an exited task has a real one.
        "exit_code": (status.get("ContainerStatus") or {}).get("ExitCode") if status.get("State") in _EXITED else None,
    }
    return _compact(row)


def _health_summary(spec: dict[str, Any], tasks: list[dict[str, Any]], shown: list[dict[str, Any]]) -> dict[str, Any]:
    """Running x/y and how many of the shown (most recent) tasks failed, with the latest error: the verdict line."""
    desired = _desired_count(spec, tasks)
    running = sum(1 for t in tasks if t.get("DesiredState") == "running" and t.get("Status", {}).get("State") == "running")
    failed = [t for t in shown if t.get("state") in ("failed", "rejected")]
    summary: dict[str, Any] = {"running": f"{running}/{desired}", "failed_in_last_tasks": f"{len(failed)}/{len(shown)}"}
    if failed:
        latest = failed[0]
        summary["last_failure"] = {k: latest.get(k) for k in ("task", "since", "error", "exit_code") if k in latest}
    summary["verdict"] = "healthy" if running >= desired and not failed else ("degraded" if running else "down")
    return summary


# --- logs: Docker's stream format ------------------------------------------------------------------


def demultiplex(raw: bytes) -> list[tuple[str, str]]:
    """`(stream, line)` pairs from a logs body. Without a TTY Docker multiplexes stdout and stderr in frames
    of an 8-byte header (stream id, 3 zero bytes, big-endian length) and the payload; with a TTY the body is raw."""
    if not _looks_multiplexed(raw):
        return [("stdout", line) for line in raw.decode(errors="replace").splitlines()]
    buffers: dict[str, bytearray] = {}
    offset = 0
    while offset + _FRAME_HEADER <= len(raw):
        stream = _STREAMS.get(raw[offset])
        size = int.from_bytes(raw[offset + 4 : offset + 8], "big")
        if stream is None or raw[offset + 1 : offset + 4] != b"\0\0\0":
            break  # not a frame: keep what was read, the rest is not trustworthy
        buffers.setdefault(stream, bytearray()).extend(raw[offset + 8 : offset + 8 + size])
        offset += _FRAME_HEADER + size
    return [(stream, line) for stream, data in buffers.items() for line in data.decode(errors="replace").splitlines()]


def _looks_multiplexed(raw: bytes) -> bool:
    return len(raw) >= _FRAME_HEADER and raw[0] in _STREAMS and raw[1:4] == b"\0\0\0"


def _parse_log_line(line: str) -> tuple[str, str | None, str]:
    """`TS [com.docker.swarm.…=…,…] message` (timestamps=1, details=1) → (timestamp, task id, message)."""
    timestamp, _, rest = line.partition(" ")
    task_id = None
    if rest.startswith("com.docker.swarm."):
        details, _, rest = rest.partition(" ")
        attrs = dict(pair.split("=", 1) for pair in details.split(",") if "=" in pair)
        task_id = attrs.get("com.docker.swarm.task.id")
    return timestamp, task_id, rest


def _sort_key(timestamp: str) -> str:
    """RFC 3339 with its fraction padded to 9 digits, so lines from all tasks sort in time order as strings."""
    head, dot, fraction = timestamp.rstrip("Z").partition(".")
    return head + "." + (fraction if dot else "").ljust(9, "0")


# --- the server --------------------------------------------------------------------------------------


def build_server(config: ConnectorsConfig) -> MCPServer:
    cfg = config.swarm
    if not cfg.url:
        raise ValueError("swarm.url is not set in connectors.yaml (unix:///var/run/docker.sock or tcp://host:port)")
    server = new_server("swarm", INSTRUCTIONS)
    negotiated: dict[str, str] = {}

    async def find_service(docker: Docker, service: str) -> dict[str, Any]:
        name = _check_name(service, "service")
        return await docker.json(f"/services/{name}", missing=f"service {name!r}")  # type: ignore[no-any-return]

    async def node_names(docker: Docker) -> dict[str, str]:
        return {n["ID"]: n.get("Description", {}).get("Hostname", n["ID"][:12]) for n in await docker.json("/nodes")}

    @server.tool(annotations=READ_ONLY)
    async def list_services(
        stack: Annotated[str, Field(description="Only services of this stack (e.g. paylane-edge); empty: all.")] = "",
    ) -> str:
        """What runs in the swarm: each service's image, mode, desired and running task counts, and update state."""
        async with _docker(cfg, negotiated) as docker:
            label = [f"{STACK_LABEL}={_check_name(stack, 'stack')}"] if stack.strip() else []
            services = await docker.json("/services", _filters(label=label))
            ids = [s["ID"] for s in services]
            tasks = await docker.json("/tasks", _filters(service=ids, desired_state=["running"])) if ids else []
        by_service: dict[str, list[dict[str, Any]]] = {}
        for task in tasks:
            by_service.setdefault(task.get("ServiceID", ""), []).append(task)
        rows = sorted((_service_summary(s, by_service.get(s["ID"], [])) for s in services), key=lambda r: str(r["name"]))
        return render({"services": rows, "count": len(rows)}, cfg.max_output_chars)

    @server.tool(annotations=READ_ONLY)
    async def service_detail(service: ServiceArg) -> str:
        """How one service is configured: image, replicas, command, env variable names (values masked), labels,
        resources, restart policy, update config and the state of its last update."""
        async with _docker(cfg, negotiated) as docker:
            found = await find_service(docker, service)
        return render(_service_detail(found), cfg.max_output_chars)

    @server.tool(annotations=READ_ONLY)
    async def service_logs(
        service: ServiceArg,
        tail: Annotated[int, Field(description="Last lines per task to read (capped by swarm.max_log_lines).", ge=1)] = 100,
        since_minutes: Annotated[int, Field(description="Only lines of the last N minutes; 0: no limit.", ge=0)] = 0,
    ) -> str:
        """Recent log lines of a service's tasks (running and exited ones), oldest first, each with time and task."""
        tail = min(tail, cfg.max_log_lines)
        async with _docker(cfg, negotiated) as docker:
            found = await find_service(docker, service)
            name = found["Spec"]["Name"]
            params = {"stdout": 1, "stderr": 1, "timestamps": 1, "details": 1, "tail": tail}
            if since_minutes:
                params["since"] = int(time.time()) - since_minutes * 60
            raw = await docker.raw(f"/services/{found['ID']}/logs", params, missing=f"service {name!r}")
            tasks = await docker.json("/tasks", _filters(service=[found["ID"]]))
        slots = {t["ID"]: _task_name(t, name) for t in tasks}
        lines = []
        for stream, line in demultiplex(raw):
            timestamp, task_id, message = _parse_log_line(line)
            lines.append((_sort_key(timestamp), timestamp, slots.get(task_id or "", (task_id or "?")[:12]), stream, message))
        lines.sort(key=lambda item: item[0])
        lines = lines[-tail:]  # Docker's tail is per task; the merged view keeps the newest `tail`
        header = f"service {name}: {len(lines)} line(s), tail={tail}" + (f", last {since_minutes} min" if since_minutes else "")
        body = [f"{_short_time(ts)} {task}{' stderr' if stream == 'stderr' else ''} {msg}" for _, ts, task, stream, msg in lines]
        return render("\n".join([header, *body]) if body else header + "\n(no log lines)", cfg.max_output_chars)

    @server.tool(annotations=READ_ONLY)
    async def stacks() -> str:
        """Which stacks are deployed (from the services' stack label), with their services and counts."""
        async with _docker(cfg, negotiated) as docker:
            services = await docker.json("/services")
        grouped: dict[str, list[str]] = {}
        loose: list[str] = []
        for service in services:
            name = str(service["Spec"].get("Name"))
            stack = (service["Spec"].get("Labels") or {}).get(STACK_LABEL)
            (grouped.setdefault(stack, []) if stack else loose).append(name)
        rows = [{"stack": s, "services": len(n), "names": sorted(n)} for s, n in sorted(grouped.items())]
        return render({"stacks": rows, "services_outside_stacks": sorted(loose)}, cfg.max_output_chars)

    @server.tool(annotations=READ_ONLY)
    async def service_health(service: ServiceArg) -> str:
        """Is a service healthy? Its most recent tasks with desired vs current state, error, exit code and time,
        and a summary: running x/y and how many recent tasks failed."""
        async with _docker(cfg, negotiated) as docker:
            found = await find_service(docker, service)
            tasks = await docker.json("/tasks", _filters(service=[found["ID"]]))
            nodes = await node_names(docker)
        name = found["Spec"]["Name"]
        newest = sorted(tasks, key=lambda t: _sort_key(t.get("Status", {}).get("Timestamp", "")), reverse=True)
        shown = [_task_row(t, name, nodes) for t in newest[:HEALTH_TASKS]]
        summary = _health_summary(found["Spec"], tasks, shown)
        return render({"service": name, "summary": summary, "tasks": shown}, cfg.max_output_chars)

    @server.tool(annotations=READ_ONLY)
    async def list_nodes() -> str:
        """The swarm's nodes: hostname, role, availability, state, engine version and which manager leads."""
        async with _docker(cfg, negotiated) as docker:
            nodes = await docker.json("/nodes")
        rows = [_node_row(n) for n in sorted(nodes, key=lambda n: str(n.get("Description", {}).get("Hostname")))]
        return render({"nodes": rows, "count": len(rows)}, cfg.max_output_chars)

    return server


def _node_row(node: dict[str, Any]) -> dict[str, Any]:
    spec, description, status = node.get("Spec", {}), node.get("Description", {}), node.get("Status", {})
    manager = node.get("ManagerStatus") or {}
    resources = description.get("Resources") or {}
    row: dict[str, Any] = {
        "hostname": description.get("Hostname"),
        "id": node.get("ID", "")[:12],
        "role": spec.get("Role"),
        "availability": spec.get("Availability"),
        "state": status.get("State"),
        "message": status.get("Message"),
        "addr": status.get("Addr"),
        "engine": (description.get("Engine") or {}).get("EngineVersion"),
        "leader": bool(manager.get("Leader")),
        "reachability": manager.get("Reachability"),
        "cpus": resources["NanoCPUs"] / 1e9 if resources.get("NanoCPUs") else None,
        "memory_gib": round(resources["MemoryBytes"] / 2**30, 1) if resources.get("MemoryBytes") else None,
        "labels": spec.get("Labels") or None,
    }
    return _compact(row)
