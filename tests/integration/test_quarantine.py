"""Per-document isolation: a batch with bad files lands every ordinary document, records each rejected file with its
reason in PostgreSQL (Dagster check, `kb ingest --json`, Prometheus), and the record clears itself when the file is fixed.
Against the real embedded PostgreSQL (pgvector), the real embedding model and real files and symlinks."""

from __future__ import annotations

import time
from pathlib import Path
from typing import Any

import dagster as dg
from prometheus_client import CollectorRegistry, generate_latest

from api.metrics import register_quarantine_collector
from assets.collections import CollectionSpec
from kb.quarantine import list_records
from pipelines.definitions import build_definitions
from tests.integration.test_pipeline import collection, resources, run, stored_docs

TLS_SECRET = """apiVersion: v1
kind: Secret
metadata:
  name: gateway-tls
  namespace: payments
type: kubernetes.io/tls
stringData:
  tls.crt: |
    -----BEGIN CERTIFICATE-----
    MIIDazCCAlOgAwIBAgIUQ2JmZ3B0dGVzdGNlcnRpZmljYXRlMA0GCSqGSIb3DQEBCwUA
    -----END CERTIFICATE-----
  tls.key: |
    -----BEGIN RSA PRIVATE KEY-----
    MIIEpAIBAAKCAQEAu1SU1LfVLPHCozMxH2Mo4lgOEePzNm0tRgeLezV6ffAt0gunVTLw
    7onLRnrq0/IzW7yWR7QkrmBL7jTKEn5u+qKhbwKfBstIs+bMY2Zkp18gnTxKLxoS2tFc
    -----END RSA PRIVATE KEY-----
"""
UNTERMINATED_KEYS = "-----BEGIN RSA PRIVATE KEY-----\n" * 32_000  # about 1 MB of key headers that never end
RUNBOOK = "# Rotating the gateway certificate\n\nRenew the certificate 30 days before expiry and restart the gateway pods.\n"


def _ordinary_batch(folder: Path) -> set[str]:
    folder.mkdir(parents=True)
    names = set()
    for i in range(6):
        name = f"runbook-{i}.md"
        (folder / name).write_text(RUNBOOK.replace("gateway", f"gateway-{i}"))
        names.add(name)
    return names


def _materialize(spec: CollectionSpec, res: dict[str, Any]) -> dg.ExecuteInProcessResult:
    defs = build_definitions([spec], res)
    return dg.materialize(
        list(defs.assets or []),
        resources=res,
        instance=dg.DagsterInstance.ephemeral(),
        selection=dg.AssetSelection.groups(spec.name),
    )


def _check(result: dg.ExecuteInProcessResult, name: str) -> dg.AssetCheckEvaluation:
    (evaluation,) = [e for e in result.get_asset_check_evaluations() if e.check_name == name]
    return evaluation


def test_a_batch_with_bad_files_lands_every_ordinary_document_and_quarantines_each_bad_one(
    postgres_url: str, sample_specs: list[CollectionSpec], tmp_path: Path
) -> None:
    folder = tmp_path / "new-docs"
    ordinary = _ordinary_batch(folder)
    outside = tmp_path / "host-passwd"
    outside.write_text("root:x:0:0:root:/root:/bin/bash\nHOST-ONLY-LINE\n")
    (folder / "passwd.md").symlink_to(outside)
    (folder / "gateway-tls.yaml").write_text(TLS_SECRET)
    (folder / "key-flood.md").write_text(UNTERMINATED_KEYS)
    (folder / "legacy.txt").write_bytes("Réconciliation du grand livre".encode("latin-1"))
    (folder / "huge.md").write_text("# Huge\n\n" + "word " * 60_000)
    spec = collection(sample_specs, "technical_docs", folder)
    res = resources(postgres_url, tmp_path / "data", max_file_bytes=200_000)

    started = time.perf_counter()
    result = _materialize(spec, res)
    seconds = time.perf_counter() - started
    assert result.success

    docs = stored_docs(postgres_url, spec)
    assert ordinary | {"gateway-tls.yaml"} <= set(docs)  # the TLS Secret lands, masked
    records = {r.doc_id: r for r in list_records(postgres_url, spec.name)}
    assert records.keys() == {"passwd.md", "legacy.txt", "huge.md"} | ({"key-flood.md"} & records.keys())
    assert records["passwd.md"].kind == "outside_source" and records["legacy.txt"].kind == "invalid_encoding"
    assert records["huge.md"].kind == "oversize"
    assert "passwd.md" not in docs
    index = _check(result, "quarantine")
    assert not index.passed and index.severity == dg.AssetCheckSeverity.WARN
    listed = index.metadata["details"].value
    assert {d["doc_id"] for d in listed["documents"]} == set(records)
    assert all(d["reason"] for d in listed["documents"])
    assert _check(result, "no_unmasked_secrets").passed  # masking left nothing, so nothing was held back for it
    # Nothing of the host file, of the key or of the flood reached the index.
    texts = _stored_texts(postgres_url, spec)
    assert "HOST-ONLY-LINE" not in texts and "MIIEpAIBAAKCAQEA" not in texts and "BEGIN RSA PRIVATE KEY" not in texts
    print(f"batch with bad files: {seconds:.1f} s")  # the ordinary documents alone: see test_quarantine_clears...


def test_quarantine_clears_itself_when_the_file_is_fixed_or_deleted_and_is_exported_to_prometheus(
    postgres_url: str, sample_specs: list[CollectionSpec], tmp_path: Path
) -> None:
    folder = tmp_path / "docs"
    ordinary = _ordinary_batch(folder)
    (folder / "legacy.txt").write_bytes("Réconciliation du grand livre".encode("latin-1"))
    (folder / "empty.md").write_text("   \n")
    spec = collection(sample_specs, "technical_docs", folder)
    res = resources(postgres_url, tmp_path / "data")

    first = run(spec, res)
    assert {q["doc_id"] for q in first["quarantined"]} == {"legacy.txt", "empty.md"}
    assert all(q["kind"] and q["stage"] and q["reason"] for q in first["quarantined"])
    registry = CollectorRegistry()
    register_quarantine_collector(postgres_url, registry)
    exported = generate_latest(registry).decode()
    assert f'kb_quarantined_documents{{collection="{spec.name}",reason="invalid_encoding"}} 1.0' in exported
    listed = {r["doc_id"]: r for r in _cli_quarantine(postgres_url)["quarantined"][spec.name]}
    assert listed.keys() == {"legacy.txt", "empty.md"} and listed["legacy.txt"]["kind"] == "invalid_encoding"
    assert all(r["reason"] and r["stage"] == "parse" and r["since"] for r in listed.values())

    (folder / "legacy.txt").write_text("Réconciliation du grand livre, en UTF-8 désormais.")
    (folder / "empty.md").unlink()
    second = run(spec, res)
    assert second["quarantined"] == [] and list_records(postgres_url, spec.name) == []
    assert set(stored_docs(postgres_url, spec)) == ordinary | {"legacy.txt"}
    assert spec.name not in generate_latest(registry).decode()
    assert spec.name not in _cli_quarantine(postgres_url)["quarantined"]


def _cli_quarantine(postgres_url: str) -> dict[str, Any]:
    """`kb quarantine --json` on the test database (DATABASE_URL: no embedded server is started)."""
    import json

    from typer.testing import CliRunner

    from kb.cli import app

    result = CliRunner().invoke(app, ["quarantine", "--json"], env={"DATABASE_URL": postgres_url})
    assert result.exit_code == 0, result.output
    return json.loads(result.stdout)


def _stored_texts(postgres_url: str, spec: CollectionSpec) -> str:
    import psycopg

    with psycopg.connect(postgres_url) as conn:
        rows = conn.execute(f"SELECT text, metadata::text FROM kb_chunks_{spec.name}").fetchall()
    return "\n".join(f"{text}\n{metadata}" for text, metadata in rows)
