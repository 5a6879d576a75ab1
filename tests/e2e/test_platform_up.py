"""`kb up` as a user runs it: the Dagster UI shows five asset groups, all materialized, with checks."""

from __future__ import annotations

from collections import Counter

import httpx
import pytest

from tests.e2e.conftest import RunningPlatform

pytestmark = pytest.mark.e2e


def test_dagster_shows_five_materialized_asset_groups_with_checks(platform: RunningPlatform) -> None:
    query = "{ assetNodes { groupName hasAssetChecks assetMaterializations(limit: 1) { timestamp } } }"
    nodes = httpx.post(f"{platform.dagster}/graphql", json={"query": query}, timeout=30).json()["data"]["assetNodes"]
    groups = Counter(n["groupName"] for n in nodes)
    assert groups == dict.fromkeys(("technical_docs", "code_snippets", "incidents", "k8s_configs", "runbooks"), 6)
    assert all(n["assetMaterializations"] for n in nodes)
    assert sum(n["hasAssetChecks"] for n in nodes) == 20
    daemons = httpx.post(
        f"{platform.dagster}/graphql",
        json={"query": "{ instance { daemonHealth { allDaemonStatuses { daemonType healthy } } } }"},
        timeout=30,
    ).json()["data"]["instance"]["daemonHealth"]["allDaemonStatuses"]
    assert {d["daemonType"] for d in daemons if d["healthy"]} >= {"SENSOR", "SCHEDULER", "QUEUED_RUN_COORDINATOR"}
