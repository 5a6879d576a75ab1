"""How well the masker does: a battery of secrets and personal data in the shapes they travel in (prose in
English, Russian and Chinese, code, YAML, .env, JSON, URLs), a battery of identifiers it must leave alone,
and a report of what it masks in real text so a person can judge its false positives.

The fake secrets are built from pieces at import time, so no scanner mistakes this file for a leak.
"""

from __future__ import annotations

import base64
import json
import random
import re
import string
import sys
import time
from collections import Counter
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any
from urllib.parse import quote

from assets.mask import mask_secrets

# ---------------------------------------------------------------------------------------------------------
# Battery: what must not survive masking.


@dataclass(frozen=True)
class Case:
    """One secret or identifier: `key` names it in structured text, `mention` is how a sentence says it
    (`{value}` where the value goes), `core` is the part that must not survive (the value by default)."""

    kind: str
    value: str
    key: str
    mention: str = "{value}"
    core: str = ""

    @property
    def secret(self) -> str:
        return self.core or self.value


def _random(seed: str, charset: str, n: int) -> str:
    return "".join(random.Random(seed).choices(charset, k=n))


_ALNUM = string.ascii_letters + string.digits
_LOWER_HEX = "0123456789abcdef"
_B64 = _ALNUM + "+/"


def _pem(label: str, seed: str) -> tuple[str, str]:
    body = "\n".join(_random(f"{seed}{i}", _B64, 64) for i in range(4))
    dashes = "-" * 5
    return f"{dashes}BEGIN {label}{dashes}\n{body}\n{dashes}END {label}{dashes}", body


def _jwt() -> str:
    def part(obj: dict[str, Any]) -> str:
        return base64.urlsafe_b64encode(json.dumps(obj).encode()).decode().rstrip("=")

    header, claims = part({"alg": "HS256", "typ": "JWT"}), part({"sub": "svc-ledger", "iat": 1717171717})
    return f"{header}.{claims}.{_random('jwt', _ALNUM + '-_', 43)}"


_AZURE_KEY = _random("azure", _B64, 86) + "=="
_SAS_SIG = _random("sas", _ALNUM, 43) + "%3D"
_SLACK_PATH = "/".join(
    (
        "T" + _random("t", string.ascii_uppercase + string.digits, 8),
        "B" + _random("b", string.ascii_uppercase, 10),
        _random("w", _ALNUM, 24),
    )
)
_RSA_PEM, _RSA_BODY = _pem("RSA PRIVATE KEY", "rsa")
_SSH_PEM, _SSH_BODY = _pem("OPENSSH PRIVATE KEY", "ssh")
_PG_PASSWORD = "Qw7!" + _random("pg", _ALNUM, 12)
_BEARER = _random("bearer", _ALNUM + "-._", 40)
_PASSWORD = "Tr0ub4dor&3" + _random("pw", _ALNUM, 6)

SECRET_CASES: tuple[Case, ...] = (
    Case("aws-access-key-id", "AK" + "IA" + _random("aws", string.ascii_uppercase + "234567", 16), "aws_access_key_id"),
    Case("aws-secret-access-key", _random("awss", _B64, 40), "aws_secret_access_key", "AWS secret access key: {value}"),
    Case(
        "azure-storage-connection-string",
        f"DefaultEndpointsProtocol=https;AccountName=payfiles;AccountKey={_AZURE_KEY};EndpointSuffix=core.windows.net",
        "storage_connection_string",
        core=_AZURE_KEY,
    ),
    Case(
        "azure-sas-url",
        f"https://payfiles.blob.core.windows.net/exports/a.csv?sv=2022-11-02&se=2026-01-01&sp=r&sig={_SAS_SIG}",
        "export_url",
        core=_SAS_SIG[:-3],
    ),
    Case("github-token", "gh" + "p_" + _random("ghp", _ALNUM, 36), "github_token"),
    Case("github-fine-grained-token", "github" + "_pat_" + _random("ghpat", _ALNUM + "_", 82), "gh_pat"),
    Case("gitlab-token", "gl" + "pat-" + _random("glpat", _ALNUM + "-_", 20), "gitlab_token"),
    Case("slack-bot-token", "xo" + "xb-" + "2048163512-5561234567890-" + _random("slack", _ALNUM, 24), "slack_bot_token"),
    Case("slack-webhook", f"https://hooks.slack.com/services/{_SLACK_PATH}", "slack_webhook_url", core=_SLACK_PATH),
    Case("stripe-live-key", "sk" + "_live_" + _random("stripe", _ALNUM, 24), "stripe_key"),
    Case("openai-key", "sk" + "-proj-" + _random("openai", _ALNUM + "-_", 48), "openai_api_key"),
    Case("google-api-key", "AI" + "za" + _random("gapi", _ALNUM + "-_", 35), "maps_api_key"),
    Case("jwt", _jwt(), "session_jwt"),
    Case("rsa-private-key", _RSA_PEM, "tls_private_key", core=_RSA_BODY),
    Case("openssh-private-key", _SSH_PEM, "deploy_ssh_key", core=_SSH_BODY),
    Case(
        "postgres-url-password",
        f"postgres://ledger:{_PG_PASSWORD}@db.payments.internal:5432/ledger",
        "database_url",
        core=_PG_PASSWORD,
    ),
    Case("bearer-token", f"Bearer {_BEARER}", "authorization", "Authorization: {value}", core=_BEARER),
    Case("twilio-api-key", "S" + "K" + _random("twilio", _LOWER_HEX, 32), "twilio_api_key"),
    Case(
        "sendgrid-key",
        "S" + "G." + _random("sg1", _ALNUM + "-_", 22) + "." + _random("sg2", _ALNUM + "-_", 43),
        "sendgrid_api_key",
    ),
    Case("npm-token", "np" + "m_" + _random("npm", _ALNUM, 36), "npm_token"),
    Case("pypi-token", "py" + "pi-AgEIcHlwaS5vcmc" + _random("pypi", _ALNUM, 80), "pypi_token"),
    Case("telegram-bot-token", "7012345678:" + _random("tg", _ALNUM + "-_", 35), "telegram_bot_token"),
    Case("vault-token", "hv" + "s." + _random("vault", _ALNUM, 90), "vault_token"),
    Case("password", _PASSWORD, "db_password", "password: {value}"),
    Case("password-zh", "Ch3ngdu" + _random("zh", _ALNUM, 9), "密码", "密码：{value}"),
    Case("password-ru", "Зима" + _random("ru", _ALNUM, 10), "пароль", "пароль: {value}"),
    Case("oauth-client-secret", _random("oauth", _ALNUM + "~._-", 34), "client_secret", "client secret: {value}"),
    Case("signing-key", _random("signing", _LOWER_HEX, 64), "webhook_signing_key", "signing_key={value}"),
    Case("card-visa", "4111 1111 1111 1111", "card_number"),
    Case("card-mastercard", "5555555555554444", "pan"),
    Case("card-amex", "3782 822463 10005", "card"),
    Case("us-ssn", "078-05-1120", "ssn", "SSN {value}"),
    Case("us-phone", "(415) 555-2671", "phone"),
    Case("cn-resident-id", "11010519491231002X", "id_card", "身份证号{value}"),
    Case("cn-mobile", "13912345678", "mobile", "手机{value}"),
    Case("cn-mobile-intl", "+86 139 1234 5678", "phone"),
    Case("ru-phone", "+7 (916) 123-45-67", "phone", "тел. {value}"),
    Case("ru-phone-8", "8-916-123-45-67", "phone", "тел. {value}"),
    Case("ru-passport", "45 06 123456", "passport", "паспорт {value}"),
    Case("ru-passport-series", "серия 4506 номер 123456", "passport", core="4506 номер 123456"),
    Case("inn-organisation", "7707083893", "inn", "ИНН {value}"),
    Case("inn-person", "500100732259", "inn", "ИНН {value}"),
    Case("snils", "112-233-445 95", "snils", "СНИЛС {value}"),
    Case("iban", "DE89 3704 0044 0532 0130 00", "iban"),
    Case("iban-gb", "GB82WEST12345698765432", "iban"),
    Case("email", "ivan.petrov@yandex.ru", "email"),
)

# Identifiers that must come out exactly as they went in.
_SHA40 = _random("commit", _LOWER_HEX, 40)
_SHA256 = _random("digest", _LOWER_HEX, 64)

BENIGN_CASES: tuple[Case, ...] = (
    Case("commit-sha", _SHA40, "commit"),
    Case("commit-sha-short", _SHA40[:7], "commit", "fixed in {value}"),
    Case("uuid", "3f2b6c1e-8d4a-4f7b-9c2e-1a5d6b7c8e9f", "request_id"),
    Case("idempotency-key", "9b2f4c1a-7e3d-4a8b-b5c6-0d1e2f3a4b5c", "idempotency_key"),
    Case("image-digest", f"registry.example.com/payments/gateway@sha256:{_SHA256}", "image"),
    Case("sha256-checksum", f"sha256:{_SHA256}", "checksum"),
    Case("trace-id", _random("trace", _LOWER_HEX, 32), "trace_id"),
    Case("version", "1.24.3", "version"),
    Case("version-v", "v2.13.0", "version"),
    Case("version-prerelease", "3.0.0-rc.1+build.20240630", "version"),
    Case("port", "8443", "port"),
    Case("epoch-seconds", "1717171717", "created"),
    Case("epoch-millis", "1717171717123", "created_ms"),
    Case("epoch-nanos", "1717171717123456789", "ts"),  # Loki's timestamps: 10% of them once passed as cards
    Case("iso-timestamp", "2024-06-30T12:34:56Z", "timestamp"),
    Case("iso-timestamp-offset", "2025-03-03T08:15:00+03:00", "timestamp"),
    Case("iso-date", "2024-09-02", "date"),
    Case("k8s-pod-name", "gateway-core-7d9f8b6c5-x2k4p", "pod"),
    Case("k8s-statefulset-pod", "ledger-db-0", "pod"),
    Case("ipv4", "10.12.0.5", "host"),
    Case("ipv4-port", "192.168.1.10:8080", "endpoint"),
    Case("ipv6", "fe80::1ff:fe23:4567:890a", "host"),
    Case("number-with-commas", "1,234,567", "count", "processed {value} payments"),
    Case("decimal", "3.14159265358979", "ratio"),
    Case("order-number-luhn-fails", "4111111111111112", "order_id"),
    Case("order-number-12-digits", "123456789012", "order_id"),
    Case("order-number-18-digits", "110105194912310021", "order_id"),
    Case("iban-check-fails", "DE89370400440532013001", "reference"),
    Case("snils-check-fails", "112-233-445 96", "reference"),
    Case("secret-name", "db-credentials", "secretName"),
    Case("password-reference", "${DB_PASSWORD}", "password"),
    Case("team-mailbox", "payments-oncall@bank.ru", "contact"),
    Case("doc-email", "jane.doe@example.com", "contact"),
)

# Whole texts that carry secret-sounding names around no secret at all.
BENIGN_TEXTS: tuple[str, ...] = (
    "def connect(password: str, token: Optional[str] = None) -> Conn:\n    return db.connect(user=user, password=password)\n",
    "token = request.headers.get('X-Token')\nself.api_key = api_key\nsecret = os.environ['SIGNING_SECRET']\n",
    "env:\n  - name: DB_PASSWORD\n    valueFrom:\n      secretKeyRef: {name: ledger-db, key: password}\n",
    "volumes:\n  - name: tls\n    secret:\n      secretName: gateway-tls\n",
    '"SecretArn": "arn:aws:secretsmanager:eu-west-1:123456789012:secret:prod/ledger-AbCdEf"',
    '{"NextToken": "AAAAAQAAAAEAAAABAAAAAgAAAAIAAAAD", "Items": []}',
    "Password: must be at least 12 characters long and rotated every 90 days.",
    "docker run -u 1000:1000 -p 8080:80 registry.example.com/gateway:1.24.3",
    "git checkout 5f3d11c && git log --oneline 09be0cd..HEAD",
    "Пароль: не короче 12 символов, меняется раз в 90 дней.",
    "密码: 至少12个字符，每90天更换一次。",
    # An 11-digit size reads as a Chinese mobile (1[3-9]…); with its unit it is left alone, bare it is not.
    "limits: 17179869184 bytes (16 GiB), 10737418240 bytes of disk",
)


def _yaml(key: str, value: str) -> str:
    if "\n" in value:
        return f"service:\n  {key}: |\n" + "".join(f"    {line}\n" for line in value.split("\n"))
    return f"service:\n  name: gateway\n  {key}: {value}\n  replicas: 3\n"


def _identifier(key: str) -> str:
    return re.sub(r"\W", "_", key)


def _code(case: Case) -> str:
    literal = json.dumps(case.value, ensure_ascii=False)
    return f"def client():\n    {_identifier(case.key)} = {literal}\n    return Client()\n"


def _env(case: Case) -> str:
    # A multi-line value goes in double quotes with \n escapes, as dotenv reads it.
    value = json.dumps(case.value, ensure_ascii=False) if "\n" in case.value else case.value
    return f"APP_ENV=staging\n{_identifier(case.key).upper()}={value}\nLOG_LEVEL=info\n"


CONTAINERS: dict[str, Callable[[Case], str]] = {
    "prose-en": lambda c: f"For the staging rollout use {c.mention.format(value=c.value)}. Ask on-call if it fails.",
    "prose-ru": lambda c: f"Для стенда используйте {c.mention.format(value=c.value)}, если что-то не так — пишите дежурному.",
    "prose-zh": lambda c: f"测试环境请使用{c.mention.format(value=c.value)}，如有问题请联系值班人员。",
    "code": _code,
    "yaml": lambda c: _yaml(c.key, c.value),
    "env": _env,
    "json": lambda c: json.dumps({"service": "gateway", c.key: c.value, "replicas": 3}, ensure_ascii=False),
    "url": lambda c: f"GET https://api.example.com/v1/callback?merchant=42&{quote(c.key)}={quote(c.value, safe='')}&lang=en",
}


def _windows(secret: str, size: int = 8) -> set[str]:
    if len(secret) <= size:
        return {secret}
    return {secret[i : i + size] for i in range(len(secret) - size + 1)}


def leaked(case: Case, container: str) -> list[str]:
    """Pieces of the case's secret (8 characters or more, raw, JSON-escaped or percent-encoded) left in the
    masked text; empty when nothing survives."""
    masked = mask_secrets(CONTAINERS[container](case)).text
    forms = {case.secret, json.dumps(case.secret, ensure_ascii=False)[1:-1], quote(case.secret, safe="")}
    return sorted({piece for form in forms for piece in _windows(form) if piece in masked})


def altered(case: Case, container: str) -> bool:
    """Whether masking changed a text that holds only the benign case."""
    text = CONTAINERS[container](case)
    return mask_secrets(text).text != text


def battery_report() -> dict[str, Any]:
    """Leaks per secret kind (the containers each leaked from) and false positives per benign kind."""
    leaks = {c.kind: [name for name in CONTAINERS if leaked(c, name)] for c in SECRET_CASES}
    false_positives = {c.kind: [name for name in CONTAINERS if altered(c, name)] for c in BENIGN_CASES}
    texts = [i for i, text in enumerate(BENIGN_TEXTS) if mask_secrets(text).text != text]
    return {
        "kinds": len(SECRET_CASES),
        "containers": list(CONTAINERS),
        "cases": len(SECRET_CASES) * len(CONTAINERS),
        "leaked_cases": sum(len(v) for v in leaks.values()),
        "leaks": {k: v for k, v in leaks.items() if v},
        "benign_cases": len(BENIGN_CASES) * len(CONTAINERS) + len(BENIGN_TEXTS),
        "false_positives": {k: v for k, v in false_positives.items() if v},
        "altered_benign_texts": texts,
    }


# ---------------------------------------------------------------------------------------------------------
# Report on real text.

_BINARY_SUFFIXES = {".pdf", ".docx", ".xlsx", ".pptx", ".zip", ".gz", ".png", ".jpg", ".jpeg", ".gif", ".ico"}
_MASK = re.compile(r"\[MASKED:([\w-]+)\]")


def _texts(path: Path) -> Iterator[tuple[str, str | None]]:
    """(source, text) for each text in `path`: the `text` field of each JSONL line, each text file of a
    folder; text None for a file that is not text."""
    if path.is_dir():
        for file in sorted(p for p in path.rglob("*") if p.is_file()):
            yield from _texts(file)
    elif path.suffix == ".jsonl":
        with path.open(encoding="utf-8") as lines:
            for n, line in enumerate(lines):
                record = json.loads(line)
                yield f"{path.name}:{record.get('id', n)}", str(record.get("text", ""))
    elif path.suffix.lower() in _BINARY_SUFFIXES:
        yield str(path), None
    else:
        try:
            yield str(path), path.read_text(encoding="utf-8")
        except UnicodeDecodeError:
            yield str(path), None


def _shape(value: str) -> str:
    """The value with letters as a/A and digits as 9: enough to tell a phone from an order number."""
    shape = re.sub(r"[A-Z]", "A", re.sub(r"[a-z]", "a", re.sub(r"\d", "9", value)))
    return shape if len(shape) <= 40 else f"{shape[:40]}…({len(value)})"


def _masked_values(original: str, masked: str) -> Iterator[tuple[str, str, int]]:
    """(kind, original value, position in the masked text) per placeholder, by aligning the text between
    placeholders (masking only replaces spans, so that text appears in the original in order)."""
    at, pieces = 0, _MASK.split(masked)
    # split gives literal, kind, literal, kind, ...
    pos = len(pieces[0])
    if not original.startswith(pieces[0]):
        return
    at = len(pieces[0])
    for i in range(1, len(pieces), 2):
        kind, literal = pieces[i], pieces[i + 1]
        placeholder = f"[MASKED:{kind}]"
        if original.startswith(placeholder + literal, at):  # in the text already: not masked here
            at += len(placeholder) + len(literal)
            pos += len(placeholder) + len(literal)
            continue
        end = original.find(literal, at) if literal else len(original)
        if end < 0:
            return
        yield kind, original[at:end], pos
        at = end + len(literal)
        pos += len(placeholder) + len(literal)


def masking_report(paths: Sequence[Path], examples: int = 5, context: int = 60) -> dict[str, Any]:
    """What the masker masks in the texts under `paths`: per source the counts per kind, and per kind up
    to `examples` contexts (masked text around the placeholder) with the masked value's shape only."""
    sources: list[dict[str, Any]] = []
    total: Counter[str] = Counter()
    for path in paths:
        counts: Counter[str] = Counter()
        found: dict[str, list[dict[str, str]]] = {}
        texts = skipped = size = 0
        started = time.perf_counter()
        for source, text in _texts(Path(path)):
            if text is None:
                skipped += 1
                continue
            texts, size = texts + 1, size + len(text.encode("utf-8"))
            result = mask_secrets(text)
            counts.update(result.counts)
            if not result.counts:
                continue
            for kind, value, pos in _masked_values(text, result.text):
                shown = found.setdefault(kind, [])
                if len(shown) < examples:
                    around = result.text[max(0, pos - context) : pos + len(kind) + 10 + context]
                    shown.append({"source": source, "context": around.replace("\n", "⏎"), "shape": _shape(value)})
        seconds = time.perf_counter() - started
        total.update(counts)
        sources.append(
            {
                "path": str(path),
                "texts": texts,
                "skipped": skipped,
                "bytes": size,
                "seconds": round(seconds, 3),
                "counts": dict(counts.most_common()),
                "examples": found,
            }
        )
    return {"sources": sources, "counts": dict(total.most_common())}


def main() -> None:
    """`python -m evals.masking PATH...`: the report on those paths and the battery, as JSON."""
    paths = [Path(p) for p in sys.argv[1:]]
    print(json.dumps({"battery": battery_report(), "report": masking_report(paths)}, ensure_ascii=False, indent=1))


if __name__ == "__main__":
    main()
