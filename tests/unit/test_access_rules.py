"""Roles, document access lists and the rate limiter's arithmetic, as pure functions."""

from __future__ import annotations

from pathlib import Path

import pytest

from assets.extract import ACL_KEY, FolderSource, RawDocument, folder_acl, parse_groups, read_acl_file, sha256, with_acl
from assets.index import stored_metadata
from kb.access.identity import Identity
from kb.access.ratelimit import retry_after_s
from kb.access.roles import load_roles
from kb.settings import PROJECT_ROOT

ROLES = load_roles(PROJECT_ROOT / "roles.yaml")
COLLECTIONS = ["technical_docs", "code_snippets", "incidents", "k8s_configs", "runbooks"]
CONNECTORS = ["gitea", "kubernetes", "swarm", "loki", "cicd", "docs"]


def test_shipped_roles_read_what_the_operators_guide_says() -> None:
    def access(*roles: str, groups: tuple[str, ...] = ()):  # type: ignore[no-untyped-def]
        return ROLES.access(Identity("u", "api_key", groups=groups, roles=roles), COLLECTIONS, CONNECTORS)

    assert access("devops").collections == frozenset(COLLECTIONS) and access("devops").connectors == frozenset(CONNECTORS)
    assert access("viewer").collections == {"technical_docs"} and access("viewer").connectors == {"docs"}
    assert {"code_snippets", "technical_docs"} <= access("developer").collections and "gitea" in access("developer").connectors
    assert "kubernetes" not in access("developer").connectors
    assert access("admin").groups is None and access("viewer").groups == ("viewer",)
    # An identity provider's groups map to roles and count for document access lists.
    mapped = access(groups=("kb-viewers", "treasury"))
    assert mapped.roles == ("viewer",) and mapped.groups == ("kb-viewers", "treasury", "viewer")
    with pytest.raises(PermissionError, match="runbooks"):
        access("viewer").readable(["runbooks"])
    with pytest.raises(PermissionError, match="any collection"):
        access("auditor").readable(None)  # an empty list must never mean "all" further down
    assert access("nobody").collections == frozenset()


def test_a_roles_file_naming_an_undefined_role_is_refused(tmp_path: Path) -> None:
    path = tmp_path / "roles.yaml"
    path.write_text("roles: {viewer: {collections: [technical_docs]}}\ngroups: {kb-ops: [devops]}\n")
    with pytest.raises(ValueError, match="devops"):
        load_roles(path)


def test_the_nearest_access_list_wins_and_is_part_of_the_content_hash(tmp_path: Path) -> None:
    acls = {"": ["everyone"], "payments": ["payments"], "payments/escrow": ["devops"]}
    assert folder_acl("readme.md", acls) == ["everyone"]
    assert folder_acl("payments/ledger.md", acls) == ["payments"]
    assert folder_acl("payments/escrow/holds.md", acls) == ["devops"]
    assert folder_acl("x.md", {}) is None
    doc = RawDocument("a.md", b"text", sha256(b"text"), 4, {"path": "a.md"})
    restricted = with_acl(doc, ["devops", "treasury"])
    assert restricted.metadata[ACL_KEY] == "devops, treasury" and restricted.content_hash != doc.content_hash
    assert with_acl(doc, None) is doc
    assert stored_metadata(restricted.metadata)[ACL_KEY] == ["devops", "treasury"]
    assert parse_groups("a, b  c,a") == ["a", "b", "c"] and parse_groups(["x", " ", "y"]) == ["x", "y"]


def test_a_folder_source_applies_its_access_files_and_refuses_a_broken_one(tmp_path: Path) -> None:
    (tmp_path / "open.md").write_text("# open")
    (tmp_path / "vault").mkdir()
    (tmp_path / "vault" / ".kb-access.yaml").write_text("allowed_groups: [treasury]\n")
    (tmp_path / "vault" / "keys.md").write_text("# rotation")
    docs = {d.doc_id: d for d in FolderSource(tmp_path).documents(1_000_000)}
    assert set(docs) == {"open.md", "vault/keys.md"}  # the access file itself is not a document
    assert ACL_KEY not in docs["open.md"].metadata and docs["vault/keys.md"].metadata[ACL_KEY] == "treasury"
    (tmp_path / "vault" / ".kb-access.yaml").write_text("allowed_groups: []\n")
    with pytest.raises(ValueError, match="names no group"):
        FolderSource(tmp_path).documents(1_000_000)
    with pytest.raises(ValueError, match="not valid YAML"):
        read_acl_file(b"allowed_groups: [unclosed", "x/.kb-access.yaml")


def test_retry_after_is_when_one_more_request_fits() -> None:
    # 12 served in the previous minute, 0 now, limit 10, a quarter of this minute gone: 12·(1-t) + 1 ≤ 10 at t = 0.25.
    assert retry_after_s(12, 0, 10, 0.25) == 1
    # This minute is full (10 of 10): wait for the next minute and for its weight to shrink: 10·(1-t) + 1 ≤ 10.
    assert retry_after_s(0, 10, 10, 0.5) == 36
    assert retry_after_s(0, 0, 10, 0.99) >= 1
