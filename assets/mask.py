"""Mask secrets and personal data before anything is chunked, embedded, indexed or logged."""

from __future__ import annotations

import re
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass

_KEY_WORDS = (
    r"password|passwd|pwd|passphrase|secret|client[_-]?secret|api[_-]?key|apikey|access[_-]?key|"
    r"secret[_-]?key|private[_-]?key|auth[_-]?token|access[_-]?token|refresh[_-]?token|token|пароль|密码"
)


def _luhn_ok(digits: str) -> bool:
    total = 0
    for i, ch in enumerate(reversed(digits)):
        n = int(ch)
        if i % 2 == 1:
            n = n * 2 - 9 if n * 2 > 9 else n * 2
        total += n
    return total % 10 == 0


@dataclass(frozen=True)
class Rule:
    kind: str
    pattern: re.Pattern[str]
    # Which group holds the secret (0: the whole match); the rest of the match is kept for context.
    group: int = 0
    accept: Callable[[str], bool] | None = None
    # A cheap pattern every match must contain: text without it skips the full pattern (masking runs on
    # every chunk and every tool output, so the common case of "nothing to mask" must be fast).
    hint: re.Pattern[str] | None = None


RULES: tuple[Rule, ...] = (
    Rule(
        "private-key",
        re.compile(r"-----BEGIN [A-Z ]*PRIVATE KEY-----.*?-----END [A-Z ]*PRIVATE KEY-----", re.S),
        hint=re.compile("PRIVATE KEY"),
    ),
    Rule("jwt", re.compile(r"\beyJ[\w-]{8,}\.[\w-]{8,}\.[\w-]{8,}"), hint=re.compile("eyJ")),
    Rule("aws-access-key", re.compile(r"\b(?:AKIA|ASIA)[0-9A-Z]{16}\b"), hint=re.compile("AKIA|ASIA")),
    Rule("github-token", re.compile(r"\bgh[pousr]_[A-Za-z0-9]{30,}\b"), hint=re.compile("gh[pousr]_")),
    Rule("slack-token", re.compile(r"\bxox[abprs]-[A-Za-z0-9-]{10,}"), hint=re.compile("xox")),
    Rule(
        "api-key",
        re.compile(r"\b(?:sk|rk|pk)_(?:live|test)_[A-Za-z0-9]{16,}\b|\bsk-[A-Za-z0-9_-]{20,}"),
        hint=re.compile("_live_|_test_|sk-"),
    ),
    Rule("bearer-token", re.compile(r"\b[Bb]earer\s+([A-Za-z0-9._~+/-]{16,}=*)"), group=1, hint=re.compile("earer")),
    Rule("url-password", re.compile(r"\b[a-z][a-z0-9+.-]*://[^\s:/@]+:([^\s@/]+)@"), group=1, hint=re.compile("://")),
    Rule(
        "credential",
        re.compile(rf"(?i)(?:{_KEY_WORDS})[\"']?\s*[:=]\s*[\"']?(?!\[MASKED:)([^\s\"'`,;&)\]}}]{{3,}})"),
        group=1,
        hint=re.compile(rf"(?i){_KEY_WORDS}"),
        # Placeholders and references to other secrets are not secrets themselves.
        # Type annotations in code (`secret: str`) name a type, not a value.
        accept=lambda v: (
            not re.fullmatch(
                r"(?:str|string|bytes|int|bool|dict|Any|None|SecretStr|Optional\[\w*|Secret)\W*|\$\{?[\w.]+\}?|<[^>]+>|\*+|x+|\{\{.*\}\}|null|none|true|false|"
                r"secretKeyRef|valueFrom|\|",
                v,
                re.I,
            )
        ),
    ),
    Rule(
        "card-number",
        re.compile(r"(?<![\d-])(?:\d[ -]?){12,18}\d(?![\d-])"),
        accept=lambda v: _luhn_ok(re.sub(r"\D", "", v)) and 13 <= len(re.sub(r"\D", "", v)) <= 19,
    ),
    Rule("ssn", re.compile(r"(?<!\d)(?!000|666|9\d\d)\d{3}-(?!00)\d{2}-(?!0000)\d{4}(?!\d)")),
    Rule("phone", re.compile(r"(?<![\w+])\+\d{1,3}[ .-]?\(?\d{2,4}\)?[ .-]?\d{3}[ .-]?\d{2}[ .-]?\d{2,4}(?!\d)")),
    Rule("phone", re.compile(r"(?<!\d)\(\d{3}\)\s?\d{3}-\d{4}(?!\d)|(?<![\d-])\d{3}-\d{3}-\d{4}(?![\d-])")),
)

_SECRET_DATA = re.compile(r"^(?P<indent>\s*)(?:data|stringData):\s*$")
_KIND_SECRET = re.compile(r"^kind:\s*Secret\s*$", re.M)


@dataclass(frozen=True)
class MaskResult:
    text: str
    counts: dict[str, int]


def mask_secrets(text: str) -> MaskResult:
    """Replace every secret with `[MASKED:kind]`; return the text and how many of each kind were found."""
    counts: Counter[str] = Counter()
    text = _mask_kubernetes_secret_data(text, counts)
    for rule in RULES:
        if rule.hint is not None and not rule.hint.search(text):
            continue
        text = rule.pattern.sub(lambda m, r=rule: _replace(m, r, counts), text)  # type: ignore[misc]
    return MaskResult(text, dict(counts))


def find_secrets(text: str) -> list[str]:
    """Kinds of secrets still present in `text` (empty for masked text); used by the asset checks."""
    return [kind for kind, n in mask_secrets(text).counts.items() for _ in range(n)]


def _replace(match: re.Match[str], rule: Rule, counts: Counter[str]) -> str:
    secret = match.group(rule.group)
    # Masking is idempotent: a placeholder from an earlier pass is not a secret.
    if secret is None or "[MASKED:" in secret or (rule.accept is not None and not rule.accept(secret)):
        return match.group(0)
    counts[rule.kind] += 1
    start, end = match.start(rule.group) - match.start(), match.end(rule.group) - match.start()
    whole = match.group(0)
    return f"{whole[:start]}[MASKED:{rule.kind}]{whole[end:]}"


def _mask_kubernetes_secret_data(text: str, counts: Counter[str]) -> str:
    """Values under `data:`/`stringData:` of a `kind: Secret` manifest are secrets whatever their keys."""
    if not _KIND_SECRET.search(text):
        return text
    out, block_indent = [], None
    for line in text.split("\n"):
        header = _SECRET_DATA.match(line)
        if header:
            block_indent = len(header.group("indent"))
        elif block_indent is not None:
            indent = len(line) - len(line.lstrip())
            if line.strip() and indent <= block_indent:
                block_indent = None
            elif ":" in line and line.strip():
                key, _, value = line.partition(":")
                if value.strip() and "[MASKED:" not in value:
                    counts["k8s-secret"] += 1
                    line = f"{key}: [MASKED:k8s-secret]"
        out.append(line)
    return "\n".join(out)
