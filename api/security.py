"""HMAC signatures of webhooks: GitHub (X-Hub-Signature-256), Gitea (X-Gitea-Signature), others (X-KB-Signature)."""

from __future__ import annotations

import hashlib
import hmac
from collections.abc import Mapping

SIGNATURE_HEADERS = ("x-hub-signature-256", "x-gitea-signature", "x-kb-signature")


def sign(body: bytes, secret: str) -> str:
    return "sha256=" + hmac.new(secret.encode(), body, hashlib.sha256).hexdigest()


def verify(body: bytes, headers: Mapping[str, str], secret: str) -> bool:
    """True when any supported header carries the HMAC-SHA256 of the raw body ('sha256=' prefix optional)."""
    expected = hmac.new(secret.encode(), body, hashlib.sha256).hexdigest()
    for name in SIGNATURE_HEADERS:
        value = headers.get(name)
        if value and hmac.compare_digest(value.removeprefix("sha256=").strip().lower(), expected):
            return True
    return False
