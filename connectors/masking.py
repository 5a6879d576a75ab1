"""Masking of every connector output: the ingestion masker, plus the values of variables whose names
say they hold a secret (`*_PASSWORD`, `*_TOKEN`, `*_KEY`, `*_SECRET`), in the shapes tools print them."""

from __future__ import annotations

import re

from assets.mask import mask_secrets

_SECRET_NAME = r"[A-Za-z0-9_.-]*(?:PASSWORD|PASSWD|TOKEN|KEY|SECRET|CREDENTIALS?)[A-Za-z0-9_]*"
# NAME=value (env lists, Docker's Env, shell), NAME: value (YAML), "NAME": "value" (JSON objects).
_ASSIGNED = re.compile(rf"(?i)(?<![\w-])({_SECRET_NAME})(\"?\s*[=:]\s*\"?)(?!\[MASKED:)([^\s\"',;}}\]\\]+)")
# Kubernetes env entries: {"name": "DB_PASSWORD", "value": "…"} and its YAML twin.
_NAME_VALUE = re.compile(rf"(?i)(\"?name\"?\s*:\s*\"?{_SECRET_NAME}\"?\s*,?\s*\"?value\"?\s*:\s*\"?)(?!\[MASKED:)([^\"\n,}}]+)")


_HINT = re.compile(r"(?i)PASSWORD|PASSWD|TOKEN|KEY|SECRET|CREDENTIAL")


def mask_output(text: str) -> str:
    """`text` with every secret replaced by `[MASKED:kind]`; idempotent."""
    if not _HINT.search(text):  # the common case: no variable that names a secret
        return mask_secrets(text).text
    text = _NAME_VALUE.sub(lambda m: f"{m.group(1)}[MASKED:env]", text)
    text = _ASSIGNED.sub(lambda m: f"{m.group(1)}{m.group(2)}[MASKED:env]", text)
    return mask_secrets(text).text


def mask_env(env: list[str] | dict[str, str] | None) -> list[str]:
    """An environment as `NAME=[MASKED:env]` lines: names are kept, values never leave the connector."""
    if not env:
        return []
    names = list(env) if isinstance(env, dict) else [item.split("=", 1)[0] for item in env]
    return [f"{name}=[MASKED:env]" for name in names]
