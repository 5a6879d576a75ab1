"""LDAP sign-in: a simple bind as the user, then the groups the directory lists the user in, read with that same bind."""

from __future__ import annotations

import re
from typing import Any

from ldap3 import BASE, NONE, SUBTREE, Connection, Server  # type: ignore[import-untyped]  # ldap3 ships no types
from ldap3.core.exceptions import LDAPCommunicationError, LDAPException  # type: ignore[import-untyped]
from ldap3.utils.conv import escape_filter_chars  # type: ignore[import-untyped]
from ldap3.utils.dn import escape_rdn  # type: ignore[import-untyped]

from kb.access.identity import AuthError, Identity

# Narrower than LDAP allows on purpose: nothing here can change a DN or a filter, even before escaping.
USERNAME = re.compile(r"[A-Za-z0-9._@-]{1,128}")
MAX_PASSWORD_CHARS = 1024
_RDN_TEMPLATE = re.compile(r"\s*([A-Za-z][A-Za-z0-9-]*)\s*=\s*\{username\}\s*,")
_REFUSED = "invalid username or password"  # one message for wrong password and unknown user: no account probing


class LDAPAuthenticator:
    """Checks a username and password against an LDAP directory; groups come from `group_filter` under `group_base`."""

    def __init__(
        self,
        url: str,
        user_dn_template: str,
        group_base: str,
        group_filter: str = "(&(objectClass=groupOfNames)(member={user_dn}))",
        group_name_attribute: str = "cn",
        timeout_s: float = 5,
    ) -> None:
        if "{username}" not in user_dn_template:
            raise ValueError("user_dn_template must contain {username}")
        if "{user_dn}" not in group_filter:
            raise ValueError("group_filter must contain {user_dn}")
        self.url = url
        self.user_dn_template = user_dn_template
        self.group_base = group_base
        self.group_filter = group_filter
        self.group_name_attribute = group_name_attribute
        self.timeout_s = timeout_s

    def authenticate(self, username: str, password: str) -> Identity:
        """The identity of a user whose password the directory accepts; AuthError (never echoing the password) otherwise."""
        if not USERNAME.fullmatch(username):
            raise AuthError("invalid username: use 1-128 letters, digits, '.', '_', '@' or '-'")
        # An empty password would make a simple bind "unauthenticated" (RFC 4513 5.1.2): servers report success.
        if not password:
            raise AuthError("a password is required")
        if len(password) > MAX_PASSWORD_CHARS:
            raise AuthError(_REFUSED)
        user_dn = self.user_dn_template.replace("{username}", escape_rdn(username))
        server = Server(self.url, connect_timeout=self.timeout_s, get_info=NONE)
        connection = Connection(server, user=user_dn, password=password, receive_timeout=self.timeout_s, read_only=True)
        try:
            if not connection.bind():
                raise AuthError(_bind_refusal(connection.result))
            user = self._canonical_username(connection, user_dn) or username
            return Identity(user=user, method="ldap", groups=self._groups(connection, user_dn))
        except LDAPCommunicationError as exc:
            raise AuthError("the directory server (LDAP) could not be reached") from exc
        except LDAPException as exc:
            raise AuthError(f"the directory server (LDAP) refused the request ({type(exc).__name__})") from exc
        finally:
            connection.unbind()

    def _canonical_username(self, connection: Connection, user_dn: str) -> str | None:
        """The user's naming attribute as the directory stores it ('Alice' signs in as 'alice'), so one user is one name."""
        match = _RDN_TEMPLATE.match(self.user_dn_template)
        if match is None:
            return None
        attribute = match.group(1)
        if not connection.search(user_dn, "(objectClass=*)", BASE, attributes=[attribute]):
            return None
        values = _attribute_values(connection.response, attribute)
        return values[0] if len(values) == 1 else None

    def _groups(self, connection: Connection, user_dn: str) -> tuple[str, ...]:
        search_filter = self.group_filter.replace("{user_dn}", escape_filter_chars(user_dn))
        found = connection.search(self.group_base, search_filter, SUBTREE, attributes=[self.group_name_attribute])
        if not found and connection.result.get("description") != "success":
            raise AuthError(f"the directory refused the group lookup ({connection.result.get('description')})")
        return tuple(sorted(set(_attribute_values(connection.response, self.group_name_attribute))))


def _bind_refusal(result: dict[str, Any]) -> str:
    if result.get("description") == "invalidCredentials":
        return _REFUSED
    return f"the directory server (LDAP) refused the sign-in ({result.get('description')})"


def _attribute_values(response: list[dict[str, Any]] | None, attribute: str) -> list[str]:
    """String values of `attribute` over the entries of a search response (referrals and other kinds skipped)."""
    values: list[str] = []
    for entry in response or ():
        if entry.get("type") != "searchResEntry":
            continue
        found: Any = next((v for k, v in entry.get("attributes", {}).items() if k.lower() == attribute.lower()), [])
        values.extend(str(v) for v in (found if isinstance(found, list) else [found]) if str(v))
    return values
