"""`kb up` as a user runs it: the Dagster UI shows five asset groups, all materialized, with checks."""

from __future__ import annotations

from collections import Counter

import httpx
import pytest

from tests.e2e.conftest import RunningPlatform

pytestmark = pytest.mark.e2e


COLLECTIONS = ("technical_docs", "code_snippets", "incidents", "k8s_configs", "runbooks")
OPERATIONS = {"retention_summaries", "retention_archive", "retention_purge", "retention_audit", "knowledge_gaps"}


def test_dagster_shows_five_materialized_asset_groups_with_checks(platform: RunningPlatform) -> None:
    query = "{ assetNodes { assetKey { path } groupName hasAssetChecks assetMaterializations(limit: 1) { timestamp } } }"
    nodes = httpx.post(f"{platform.dagster}/graphql", json={"query": query}, timeout=30).json()["data"]["assetNodes"]
    collections = [n for n in nodes if n["groupName"] != "operations"]
    assert Counter(n["groupName"] for n in collections) == dict.fromkeys(COLLECTIONS, 6)
    assert all(n["assetMaterializations"] for n in collections)
    assert sum(n["hasAssetChecks"] for n in collections) == 25  # every stage but raw_documents; index has `quarantine`
    # Retention and the knowledge-gap report run on their schedules, not at start-up; each has its checks.
    operations = [n for n in nodes if n["groupName"] == "operations"]
    assert {n["assetKey"]["path"][-1] for n in operations} == OPERATIONS
    assert all(n["hasAssetChecks"] for n in operations)
    daemons = httpx.post(
        f"{platform.dagster}/graphql",
        json={"query": "{ instance { daemonHealth { allDaemonStatuses { daemonType healthy } } } }"},
        timeout=30,
    ).json()["data"]["instance"]["daemonHealth"]["allDaemonStatuses"]
    assert {d["daemonType"] for d in daemons if d["healthy"]} >= {"SENSOR", "SCHEDULER", "QUEUED_RUN_COORDINATOR"}
