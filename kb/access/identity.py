"""Who is asking, as every sign-in method reports it."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

Method = Literal["api_key", "oidc", "ldap", "session", "local", "forwarded"]


class AuthError(Exception):
    """A credential was refused; the message says why, safe to show the caller (it never echoes the secret)."""


@dataclass(frozen=True)
class Identity:
    """A signed-in user: `roles` come from the key (API keys) or from `groups` through roles.yaml (OIDC, LDAP)."""

    user: str
    method: Method
    groups: tuple[str, ...] = ()
    roles: tuple[str, ...] = ()
