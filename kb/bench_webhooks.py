"""A webhook burst: signed push deliveries sent to `POST /webhooks/{source}` at a steady rate, as a busy repository
(or a replayed hook) sends them; the figures say whether the endpoint kept up.

Run it from another process than the API (`python -m kb.bench_webhooks --api http://127.0.0.1:8000 ...`): in one
process the sender and the server share one interpreter lock, and the figures would be the sum of both.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import random
import sys
import time
from collections import Counter
from collections.abc import Sequence
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import httpx
import numpy as np

from api.security import sign


@dataclass(frozen=True)
class BurstFigures:
    deliveries: int
    seconds: float  # from the first delivery's start to the last answer
    statuses: dict[str, int]  # HTTP status → count ("error: ..." for deliveries that got no answer)
    latency_ms: dict[str, float]  # p50, p90, p99, max


def push_payloads(paths: Sequence[str], count: int, repository: str = "ops/knowledge", seed: int = 14) -> list[dict[str, Any]]:
    """`count` Gitea/GitHub push payloads, each modifying one to three of `paths` (every path in some push)."""
    rng = random.Random(seed)
    payloads = []
    for i in range(count):
        modified = [paths[i % len(paths)], *rng.sample(list(paths), min(len(paths), rng.randint(0, 2)))]
        commit = {"id": f"{i:040x}", "modified": sorted(set(modified))}
        payloads.append({"ref": "refs/heads/main", "repository": {"full_name": repository}, "commits": [commit]})
    return payloads


async def send_burst(api: str, source: str, bodies: Sequence[bytes], seconds: float, secret: str,
                     concurrency: int = 32) -> BurstFigures:  # fmt: skip
    """Deliver `bodies` evenly spread over `seconds`, at most `concurrency` at a time, each signed with `secret`."""
    gate = asyncio.Semaphore(concurrency)
    statuses: Counter[str] = Counter()
    latencies: list[float] = []
    started = time.perf_counter()

    async def deliver(client: httpx.AsyncClient, i: int) -> None:
        await asyncio.sleep(max(0.0, started + i * seconds / len(bodies) - time.perf_counter()))
        async with gate:
            sent = time.perf_counter()
            headers = {"X-Gitea-Signature": sign(bodies[i], secret), "Content-Type": "application/json"}
            try:
                response = await client.post(f"{api}/webhooks/{source}", content=bodies[i], headers=headers)
                statuses[str(response.status_code)] += 1
            except httpx.HTTPError as exc:
                statuses[f"error: {type(exc).__name__}"] += 1
            latencies.append((time.perf_counter() - sent) * 1000)

    limits = httpx.Limits(max_connections=concurrency, max_keepalive_connections=concurrency)
    async with httpx.AsyncClient(timeout=30, limits=limits) as client:
        await asyncio.gather(*(deliver(client, i) for i in range(len(bodies))))
    elapsed = time.perf_counter() - started
    percentiles = {f"p{q}": round(float(np.percentile(latencies, q)), 1) for q in (50, 90, 99)} if latencies else {}
    return BurstFigures(
        len(bodies), round(elapsed, 2), dict(statuses), {**percentiles, "max": round(max(latencies, default=0), 1)}
    )


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--api", required=True, help="Base URL of the API, e.g. http://127.0.0.1:8000")
    parser.add_argument("--source", default="gitea", help="Webhook source route (gitea, github, incident, argocd).")
    parser.add_argument("--secret", required=True, help="The API's KB_API_WEBHOOK_SECRET.")
    parser.add_argument("--seconds", type=float, default=10.0, help="Spread the deliveries over this long.")
    parser.add_argument("--concurrency", type=int, default=32)
    group = parser.add_mutually_exclusive_group(required=True)
    group.add_argument("--payloads", type=Path, help="A file of JSON payloads, one a line, delivered in order.")
    group.add_argument("--paths", nargs="+", help="Document paths for generated push payloads (with --count).")
    parser.add_argument("--count", type=int, default=1000, help="Generated deliveries (with --paths).")
    args = parser.parse_args(argv)
    if args.payloads:
        bodies = [line.encode() for line in args.payloads.read_text().splitlines() if line.strip()]
    else:
        bodies = [json.dumps(p).encode() for p in push_payloads(args.paths, args.count)]
    figures = asyncio.run(send_burst(args.api.rstrip("/"), args.source, bodies, args.seconds, args.secret, args.concurrency))
    sys.stdout.write(json.dumps(asdict(figures)) + "\n")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
