"""Properties of the masker over generated documents: secrets of many formats (AWS keys, GitHub tokens,
assignments, PEM keys ended and cut off, JWTs, cards with a valid Luhn digit) inside prose, Markdown, YAML
(Kubernetes Secrets with `data:`/`stringData:` and `|` blocks), JSON and .env, mixed with placeholders
from earlier passes.

Masking is idempotent (masked text masks to itself and holds no finding), on these documents and on
fragments of all of it glued in any order; every secret written into a document is gone from its masked
form, and the ordinary words around them are all still there. Each counterexample found on the way is an
`@example` here.
"""

from __future__ import annotations

import base64
import json
import re
import tempfile
from dataclasses import dataclass, field

from hypothesis import HealthCheck, example, given, settings
from hypothesis import strategies as st
from hypothesis.configuration import set_hypothesis_home_dir

from assets.mask import MaskResult, mask_secrets

# Hypothesis's caches go to a folder removed at exit, not to .hypothesis/ in the repo.
_HYPOTHESIS_HOME = tempfile.TemporaryDirectory(prefix="kb-mask-hypothesis-")
set_hypothesis_home_dir(_HYPOTHESIS_HOME.name)
# Derandomized and without an example database: the same documents on every run and machine; bounded so
# the file runs in seconds on a busy CI runner.
PROPERTY_SETTINGS = settings(
    max_examples=200, deadline=None, database=None, derandomize=True, suppress_health_check=[HealthCheck.too_slow]
)

# Ordinary words (no secret names among them: `token`, `key`, `secret` would make an assignment).
WORDS = (
    "payment gateway acquirer ledger settlement refund capture merchant fraud score kafka partition consumer "
    "lag redis failover retry timeout certificate rotation deployment replica namespace alert runbook incident "
    "rollback latency budget reconciliation batch webhook signature the of and to in is for on with after"
).split()
KINDS = ("credential", "jwt", "private-key", "k8s-secret", "github-token", "card-number", "email")
ALNUM = "ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789"
B64 = ALNUM + "+/"


@dataclass
class Doc:
    """A generated document: its text, the secret strings written into it, the ordinary words around them."""

    text: str
    secrets: list[str] = field(default_factory=list)
    words: list[str] = field(default_factory=list)


@dataclass(frozen=True)
class Secret:
    """`text` goes into the document; `parts` are the strings that must not survive masking."""

    text: str
    parts: tuple[str, ...]


def _chars(alphabet: str, size: int) -> st.SearchStrategy[str]:
    return st.text(st.sampled_from(alphabet), min_size=size, max_size=size)


def _luhn_complete(digits: str) -> str:
    """`digits` and the check digit that makes the number pass Luhn."""
    total = 0
    for i, ch in enumerate(reversed(digits + "0")):
        n = int(ch) * (2 if i % 2 else 1)
        total += n - 9 if n > 9 else n
    return digits + str((10 - total % 10) % 10)


@st.composite
def aws_keys(draw: st.DrawFn) -> Secret:
    key = "AKIA" + draw(_chars("ABCDEFGHIJKLMNOPQRSTUVWXYZ234567", 16))
    return Secret(key, (key,))


@st.composite
def github_tokens(draw: st.DrawFn) -> Secret:
    token = draw(st.sampled_from(("ghp_", "gho_", "ghs_"))) + draw(_chars(ALNUM, 36))
    return Secret(token, (token,))


@st.composite
def passwords(draw: st.DrawFn) -> str:
    """A password that looks like one: letters, digits and a symbol (not a word, not an identifier)."""
    core = draw(_chars(ALNUM, 10))
    return f"{core[:4]}{draw(st.sampled_from('!#*@-'))}{core[4:]}9x"


@st.composite
def assignments(draw: st.DrawFn) -> Secret:
    value = draw(passwords())
    name = draw(st.sampled_from(("password", "DB_PASSWORD", "api_key", "client_secret", "pwd")))
    form = draw(st.sampled_from(("{n}={v}", "{n}: {v}", '{n} = "{v}"', "export {n}='{v}'")))
    return Secret(form.format(n=name, v=value), (value,))


@st.composite
def pem_keys(draw: st.DrawFn) -> Secret:
    lines = draw(st.lists(_chars(B64, 64), min_size=1, max_size=4))
    last = draw(_chars(B64, 12))
    kind = draw(st.sampled_from(("RSA PRIVATE KEY", "PRIVATE KEY", "EC PRIVATE KEY", "OPENSSH PRIVATE KEY")))
    body = "\n".join(("MIIE" + lines[0][4:], *lines[1:], last + "=="))
    ended = draw(st.booleans())
    text = f"-----BEGIN {kind}-----\n{body}" + (f"\n-----END {kind}-----" if ended else "")
    return Secret(text, (*lines[1:], lines[0][4:], last))


@st.composite
def jwts(draw: st.DrawFn) -> Secret:
    def part(value: dict[str, object]) -> str:
        return base64.urlsafe_b64encode(json.dumps(value).encode()).decode().rstrip("=")

    header = part({"alg": "HS256", "typ": "JWT"})
    payload = part({"sub": draw(_chars(ALNUM, 8)), "iat": draw(st.integers(1_500_000_000, 1_900_000_000))})
    token = f"{header}.{payload}.{draw(_chars(ALNUM + '-_', 43))}"
    return Secret(token, (payload, token.rsplit(".", 1)[1]))


@st.composite
def cards(draw: st.DrawFn) -> Secret:
    number = _luhn_complete(draw(st.sampled_from("45")) + draw(_chars("0123456789", 14)))
    grouped = draw(st.booleans())
    text = " ".join(number[i : i + 4] for i in range(0, 16, 4)) if grouped else number
    return Secret(text, (text,))


SECRETS = st.one_of(aws_keys(), github_tokens(), assignments(), pem_keys(), jwts(), cards())
# Inline secrets: one line, fit anywhere a word fits.
INLINE_SECRETS = st.one_of(aws_keys(), github_tokens(), assignments(), jwts(), cards())
PLACEHOLDERS = st.sampled_from(KINDS).map(lambda kind: f"[MASKED:{kind}]")


@st.composite
def sentences(draw: st.DrawFn, doc: Doc) -> str:
    """Words, with now and then an inline secret or a placeholder among them."""
    parts = []
    for _ in range(draw(st.integers(1, 8))):
        choice = draw(st.integers(0, 9))
        if choice == 0:
            secret = draw(INLINE_SECRETS)
            doc.secrets += secret.parts
            parts.append(secret.text)
        elif choice == 1:
            parts.append(draw(PLACEHOLDERS))
        else:
            word = draw(st.sampled_from(WORDS))
            doc.words.append(word)
            parts.append(word)
    return " ".join(parts)


@st.composite
def markdown(draw: st.DrawFn) -> Doc:
    doc = Doc("")
    blocks = []
    for _ in range(draw(st.integers(1, 5))):
        shape = draw(st.integers(0, 3))
        if shape == 0:
            blocks.append("# " + draw(sentences(doc)))
        elif shape == 1:
            secret = draw(SECRETS)
            doc.secrets += secret.parts
            blocks.append(f"```\n{secret.text}\n```")
        elif shape == 2:
            blocks.append("\n".join("- " + draw(sentences(doc)) for _ in range(draw(st.integers(1, 3)))))
        else:
            blocks.append(draw(sentences(doc)) + ".")
    doc.text = "\n\n".join(blocks) + "\n"
    return doc


def _indented(text: str, indent: int) -> str:
    return "\n".join(" " * indent + line for line in text.split("\n"))


@st.composite
def kubernetes_secrets(draw: st.DrawFn) -> Doc:
    """A Secret manifest: `data:` and `stringData:` blocks of one-line values and `|` blocks (TLS keys)."""
    doc = Doc("")
    name = draw(st.sampled_from(WORDS))
    doc.words.append(name)
    lines = ["apiVersion: v1", "kind: Secret", "metadata:", f"  name: {name}"]
    lines.append("type: " + draw(st.sampled_from(("Opaque", "kubernetes.io/tls"))))
    for block in draw(st.lists(st.sampled_from(("data", "stringData")), min_size=1, max_size=2)):
        lines.append(f"{block}:")
        for n in range(draw(st.integers(1, 3))):
            key = draw(st.sampled_from(("tls.key", "tls.crt", "ca.crt", "password", "username", "config"))) + str(n)
            style = draw(st.integers(0, 3))
            if style == 0:  # one line, base64 or plain
                value = draw(_chars(B64, 24)) + "=="
                doc.secrets.append(value)
                lines.append(f"  {key}: {value}")
            elif style == 1:  # a placeholder from an earlier pass
                lines.append(f"  {key}: {draw(PLACEHOLDERS)}")
            else:  # a `|` block: a key, or lines of a certificate or config
                secret = draw(pem_keys()) if style == 2 else draw(_chars(B64, 40).map(lambda v: Secret(v, (v,))))
                doc.secrets += secret.parts
                lines.append(f"  {key}: {draw(st.sampled_from(('|', '|-', '>')))}")
                lines.append(_indented(secret.text, 4))
    doc.text = "\n".join(lines) + "\n"
    return doc


@st.composite
def yaml_configs(draw: st.DrawFn) -> Doc:
    doc = Doc("")
    lines = []
    for _ in range(draw(st.integers(1, 6))):
        shape = draw(st.integers(0, 3))
        word = draw(st.sampled_from(WORDS))
        if shape == 0:
            doc.words.append(word)
            lines.append(f"{word}_mode: {draw(st.sampled_from(WORDS))}")
            doc.words.append(lines[-1].rsplit(" ", 1)[1])
        elif shape == 1:
            value = draw(passwords())
            doc.secrets.append(value)
            lines.append(f"{draw(st.sampled_from(('password', 'db_password', 'apiKey')))}: {value}")
        elif shape == 2:
            secret = draw(pem_keys())
            doc.secrets += secret.parts
            lines += ["private_key: |", _indented(secret.text, 2)]
        else:
            lines.append(f"note: {draw(sentences(doc))}")
    doc.text = "\n".join(lines) + "\n"
    return doc


@st.composite
def json_documents(draw: st.DrawFn) -> Doc:
    doc = Doc("")
    data: dict[str, str] = {}
    for n in range(draw(st.integers(1, 5))):
        shape = draw(st.integers(0, 2))
        if shape == 0:
            value = draw(passwords())
            doc.secrets.append(value)
            data[draw(st.sampled_from(("password", "client_secret", "api_key"))) + str(n)] = value
        elif shape == 1:
            secret = draw(st.one_of(pem_keys(), jwts(), github_tokens()))
            doc.secrets += secret.parts
            data[f"blob{n}"] = secret.text
        else:
            data[f"comment{n}"] = draw(sentences(doc))
    doc.text = json.dumps(data, indent=draw(st.sampled_from((None, 2))))
    return doc


@st.composite
def env_files(draw: st.DrawFn) -> Doc:
    doc = Doc("")
    lines = []
    for _ in range(draw(st.integers(1, 6))):
        if draw(st.booleans()):
            value = draw(passwords())
            doc.secrets.append(value)
            lines.append(f"{draw(st.sampled_from(('DB_PASSWORD', 'API_KEY', 'CLIENT_SECRET', 'TOKEN')))}={value}")
        else:
            secret = draw(INLINE_SECRETS)
            doc.secrets += secret.parts
            lines.append(f"# {draw(sentences(doc))}")
            lines.append(f"VALUE_{len(lines)}={secret.text}" if " " not in secret.text else f"# {secret.text}")
    doc.text = "\n".join(lines) + "\n"
    return doc


DOCUMENTS = st.one_of(markdown(), kubernetes_secrets(), yaml_configs(), json_documents(), env_files())

# Any text: fragments of secrets, names, separators, placeholders and structure glued in any order.
FRAGMENTS = (
    "password", "Password: ", "DB_PASSWORD=", "token", "secret", "api_key", "salt", "=", ": ", " ", "\n", "\n\n", "    ",
    '"', "'", "`", '\\"', ",", ";", "&", "?", "%41", "%40", "#", "(", ")", "[", "]", "{", "}", "${X}", "%s", "\r\n", "\t",
    "[MASKED:email]", "[MASKED:credential]", "[MASKED:k8s-secret]", "[MASKED:private-key]", "hunter2x!", "Zq8wLm3Tx9",
    "payment", "ivan.petrov@yandex.ru", "noreply@bank.ru", "+7 916 123 45 67", "4111 1111 1111 1111", "123-45-6789",
    "(415) 555-2671", "GB82WEST12345698765432", "AKIAIOSFODNN7EXAMPLE", "ghp_" + "a1B2" * 9, "eyJhbGciOiJIUzI1NiJ9", ".",
    "eyJzdWIiOiIxMjM0NTY3ODkwIn0", "SflKxwRJSMeKKF2QT4fwpMeJf36POk6yJV_adQssw5c", "-----BEGIN RSA PRIVATE KEY-----",
    "-----END RSA PRIVATE KEY-----", "MIIEowIBAAKCAQEA7bq1xxxxxxxxxxxxxxx", "QUFBQUFBQUFB==", "kind: Secret", "data:",
    "stringData:", "tls.key: |", "|", "- ", "https://", "user:p4ss@host", "Bearer ", "abcdefghijklmnop1234567",
    "Authorization: Basic dXNlcjpwYXNz", "sk-", "T3BlbkFJ", "//reg/:_authToken=", "npm_" + "x" * 36, "ИНН 7707083893",
    "AIza" + "x" * 35, "xoxb-123-456-abcdef", "glpat-" + "x" * 20, "hvs." + "x" * 24, "AccountKey=", "--password ", "sig=",
    "PuTTY-User-Key-File-2: ssh-rsa", "Private-MAC: abc123", "next_page_token", "self.password", "0123456789abcdef" * 3,
)  # fmt: skip
ANY_TEXT = st.lists(st.sampled_from(FRAGMENTS), min_size=1, max_size=30).map("".join)

# The operator's case (issue 14): a TLS Secret's `tls.key: |` block; the first pass left its lines and
# masked its first one, so the second pass read `[MASKED:private-key]` on a key line as a new entry.
TLS_SECRET = (
    "apiVersion: v1\nkind: Secret\ntype: kubernetes.io/tls\nmetadata:\n  name: gateway-tls\ndata:\n  tls.crt: |\n"
    "    LS0tLS1CRUdJTiBDRVJUSUZJQ0FURS0tLS0t\n  tls.key: |\n    -----BEGIN RSA PRIVATE KEY-----\n"
    "    MIIEowIBAAKCAQEA7bq1" + "Q3dx" * 11 + "\n    -----END RSA PRIVATE KEY-----\nstringData:\n  password: |\n"
    "    hunter2hunter2\n"
)


TLS_DOC = Doc(TLS_SECRET, ["LS0tLS1CRUdJTiBDRVJUSUZJQ0FURS0tLS0t", "MIIEowIBAAKCAQEA7bq1", "hunter2hunter2"], ["gateway"])
# An escaped quote in JSON: `password = \"…\"` was read as a value starting with a backslash, too short.
ESCAPED_QUOTE_DOC = Doc('{"comment0": "password = \\"0000!0000009x\\""}', ["0000!0000009x"], [])
# A cut-off key's last, short line (padded) was left behind.
CUT_KEY_DOC = Doc(
    "private_key: |\n  -----BEGIN RSA PRIVATE KEY-----\n  MIIE" + "0" * 60 + "\n  000000000000==\nrefund payment\n",
    ["0" * 60, "000000000000=="],
    ["refund", "payment"],
)


def _masked_words(text: str) -> list[str]:
    return re.findall(r"[a-z]+", text)


@PROPERTY_SETTINGS
@given(DOCUMENTS)
@example(TLS_DOC)
@example(ESCAPED_QUOTE_DOC)
@example(CUT_KEY_DOC)
def test_masked_text_masks_to_itself_and_has_no_findings(doc: Doc) -> None:
    once = mask_secrets(doc.text)
    assert mask_secrets(once.text) == MaskResult(once.text, {})
    assert "unstable" not in once.counts


@PROPERTY_SETTINGS
@given(ANY_TEXT)
# A word before a masked e-mail was prose on the first pass and a password on the second.
@example("Password: hunter ivan.petrov@yandex.ru")
# A secret in a percent-encoded parameter's name: the value was masked, the name kept, found again.
@example("GET /cb?ghp_%41" + "A" * 36 + "=x")
# Glued tokens: masking the first made the next one start a word.
@example("AIza" + "x" * 35 + "xoxb-123-456-abcdef")
@example("(415) 555-2671(415) 555-2671(415) 555-2671(415) 555-2671(415) 555-2671")
def test_any_text_masks_to_itself_and_has_no_findings(text: str) -> None:
    once = mask_secrets(text)
    assert mask_secrets(once.text) == MaskResult(once.text, {})


@PROPERTY_SETTINGS
@given(DOCUMENTS)
@example(TLS_DOC)
@example(ESCAPED_QUOTE_DOC)
@example(CUT_KEY_DOC)
def test_no_secret_written_into_a_document_survives(doc: Doc) -> None:
    masked = mask_secrets(doc.text).text
    assert [s for s in doc.secrets if s in masked] == []


@PROPERTY_SETTINGS
@given(DOCUMENTS)
@example(TLS_DOC)
@example(CUT_KEY_DOC)
def test_ordinary_words_survive_masking(doc: Doc) -> None:
    kept = _masked_words(mask_secrets(doc.text).text)
    missing = [w for w in set(doc.words) if kept.count(w) < doc.words.count(w)]
    assert missing == []
