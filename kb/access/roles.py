"""Roles from roles.yaml and what a signed-in user may read with them."""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from dataclasses import dataclass, replace
from pathlib import Path

import yaml
from pydantic import BaseModel, ConfigDict, Field, field_validator, model_validator

from kb.access.identity import Identity

ALL = "*"


class RoleSpec(BaseModel):
    """One role: the collections and connectors it reads, and what else it may do."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    collections: tuple[str, ...] = ()
    connectors: tuple[str, ...] = ()
    requests_per_minute: int | None = Field(default=None, ge=1, le=100_000)
    read_others_sessions: bool = False
    admin: bool = False
    all_documents: bool = False


class RolesConfig(BaseModel):
    """The roles file: roles, identity-provider groups and user names mapped to roles, default limits."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    default_requests_per_minute: int = Field(default=100, ge=1, le=100_000)
    max_open_sessions: int = Field(default=10, ge=1, le=10_000)
    roles: dict[str, RoleSpec]
    groups: dict[str, tuple[str, ...]] = Field(default_factory=dict)
    # Keys lower-cased: a forwarded user is their lower-cased e-mail, and e-mail addresses are compared case-blind.
    users: dict[str, tuple[str, ...]] = Field(default_factory=dict)

    @field_validator("users")
    @classmethod
    def _users_case_blind(cls, users: dict[str, tuple[str, ...]]) -> dict[str, tuple[str, ...]]:
        folded: dict[str, tuple[str, ...]] = {}
        for name, roles in users.items():
            key = name.strip().lower()
            if not key or key in folded:
                raise ValueError(f"users: {name!r} is empty or named twice (names are compared case-blind)")
            folded[key] = roles
        return folded

    @model_validator(mode="after")
    def _groups_name_known_roles(self) -> RolesConfig:
        for field, mapping in (("groups", self.groups), ("users", self.users)):
            unknown = sorted({r for roles in mapping.values() for r in roles} - set(self.roles))
            if unknown:
                raise ValueError(f"{field} map to undefined role(s): {', '.join(unknown)}")
        return self

    def roles_of(self, identity: Identity) -> tuple[str, ...]:
        """The identity's own roles (API keys) plus those its groups and its user name map to; unknown roles are dropped."""
        mapped = (r for g in identity.groups for r in self.groups.get(g, ()))
        named = self.users.get(identity.user.lower(), ())
        return tuple(dict.fromkeys(r for r in (*identity.roles, *mapped, *named) if r in self.roles))

    def access(self, identity: Identity, collections: Iterable[str], connectors: Iterable[str]) -> Access:
        """What `identity` may read among the configured `collections` and `connectors`."""
        names = self.roles_of(identity)
        specs = [self.roles[n] for n in names]
        return Access(
            user=identity.user,
            roles=names,
            collections=_granted(collections, (s.collections for s in specs)),
            connectors=_granted(connectors, (s.connectors for s in specs)),
            groups=None if any(s.all_documents for s in specs) else tuple(dict.fromkeys((*identity.groups, *names))),
            requests_per_minute=max(
                (s.requests_per_minute or self.default_requests_per_minute for s in specs),
                default=self.default_requests_per_minute,
            ),  # fmt: skip
            read_others_sessions=any(s.read_others_sessions for s in specs),
            admin=any(s.admin for s in specs),
        )


def _granted(configured: Iterable[str], grants: Iterable[Sequence[str]]) -> frozenset[str]:
    names = frozenset(configured)
    allowed: set[str] = set()
    for grant in grants:
        allowed |= names if ALL in grant else names & set(grant)
    return frozenset(allowed)


@dataclass(frozen=True)
class Access:
    """What one request may read. `groups` None: every document; else only documents whose access list
    is empty or names one of these groups."""

    user: str
    roles: tuple[str, ...]
    collections: frozenset[str]
    connectors: frozenset[str]
    groups: tuple[str, ...] | None
    requests_per_minute: int
    read_others_sessions: bool = False
    admin: bool = False

    def readable(self, requested: Sequence[str] | None) -> list[str]:
        """The requested collections (all readable ones when None); PermissionError names any not readable,
        and is raised when none is readable (an empty list would otherwise mean "all" further down)."""
        if not self.collections:
            raise PermissionError(f"role(s) {', '.join(self.roles) or 'none'} may not read any collection")
        if requested is None:
            return sorted(self.collections)
        refused = sorted(set(requested) - self.collections)
        if refused:
            raise PermissionError(f"role(s) {', '.join(self.roles) or 'none'} may not read collection(s) {', '.join(refused)}")
        return list(requested)

    def capped_by(self, cap: Access) -> Access:
        """This access, never beyond `cap`'s: a gateway's forwarded user reads only what both they and the gateway key
        may. The user, roles and rate limit stay this one's."""
        return replace(
            self,
            collections=self.collections & cap.collections,
            connectors=self.connectors & cap.connectors,
            groups=_capped_groups(self.groups, cap.groups),
            read_others_sessions=self.read_others_sessions and cap.read_others_sessions,
            admin=self.admin and cap.admin,
        )


def _capped_groups(own: tuple[str, ...] | None, cap: tuple[str, ...] | None) -> tuple[str, ...] | None:
    """Every document (None) only when both see every document. Two group lists intersect: a document reachable
    through a group both hold is readable by both; one each reaches through different groups is left out (a safe
    under-approximation, as a single list cannot say "readable by both")."""
    if own is None or cap is None:
        return cap if own is None else own
    return tuple(g for g in own if g in cap)


def load_roles(path: Path) -> RolesConfig:
    """Parse and validate the roles file; a ValueError names what is wrong."""
    data = yaml.safe_load(path.read_text(encoding="utf-8")) or {}
    if not isinstance(data, dict):
        raise ValueError(f"{path}: expected a mapping with a `roles` key")
    return RolesConfig.model_validate(data)
