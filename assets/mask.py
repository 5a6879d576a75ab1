"""Mask secrets and personal data before anything is chunked, embedded, indexed, logged or answered.

In this order on each text:
1. Whole blocks: `data:` of Kubernetes Secrets, private keys (also when a chunk cut them off), and
   percent-encoded query values, decoded and masked with their parameter's name.
2. detect-secrets' regex plugins (cloud keys, VCS and chat tokens, JWTs, Basic auth in URLs, ...), called
   as plain objects: no global settings, no filters, no network, safe from any thread.
3. Token formats those plugins miss (fine-grained GitHub, new OpenAI, Google, Vault, bearer headers,
   Azure connection strings, signed URLs).
4. Assignments, line by line: detect-secrets' keyword plugin (`password = "…"`), unquoted `key: value`
   (minus placeholders, references in code and prose), and values under a key that may name a secret
   whose entropy (detect-secrets' measure) says random.
5. Personal data, with its checksum where one exists: IBAN (mod 97), Chinese resident ID (ISO 7064
   MOD 11-2), cards (Luhn), Russian INN and SNILS, Russian passport, US SSN, phones (Russian, Chinese,
   international, US), personal e-mail addresses.

Every pattern runs in time linear in the text: none scans far from a start and then fails, where text
made of starts would cost the square of its length (detect-secrets' patterns that do are rewritten).
Masking is idempotent: masked text masks to itself and holds nothing to find (see `mask_secrets`).

Not masked on purpose: IP addresses, UUIDs, commit hashes, digests, versions, dates and timestamps are
identifiers operators search for; role mailboxes and documentation addresses reach no person.
"""

from __future__ import annotations

import functools
import logging
import math
import re
from collections import Counter
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass
from datetime import date
from urllib.parse import unquote_plus

from detect_secrets.plugins.artifactory import ArtifactoryDetector
from detect_secrets.plugins.aws import AWSKeyDetector
from detect_secrets.plugins.azure_storage_key import AzureStorageKeyDetector
from detect_secrets.plugins.base import RegexBasedDetector
from detect_secrets.plugins.basic_auth import BasicAuthDetector
from detect_secrets.plugins.cloudant import CloudantDetector
from detect_secrets.plugins.discord import DiscordBotTokenDetector
from detect_secrets.plugins.github_token import GitHubTokenDetector
from detect_secrets.plugins.gitlab_token import GitLabTokenDetector
from detect_secrets.plugins.high_entropy_strings import Base64HighEntropyString, HexHighEntropyString
from detect_secrets.plugins.ibm_cloud_iam import IbmCloudIamDetector
from detect_secrets.plugins.ibm_cos_hmac import IbmCosHmacDetector
from detect_secrets.plugins.jwt import JwtTokenDetector
from detect_secrets.plugins.keyword import DENYLIST as KEYWORD_DENYLIST
from detect_secrets.plugins.mailchimp import MailchimpDetector
from detect_secrets.plugins.npm import NpmDetector
from detect_secrets.plugins.openai import OpenAIDetector
from detect_secrets.plugins.private_key import PrivateKeyDetector
from detect_secrets.plugins.pypi_token import PypiTokenDetector
from detect_secrets.plugins.sendgrid import SendGridDetector
from detect_secrets.plugins.slack import SlackDetector
from detect_secrets.plugins.softlayer import SoftlayerDetector
from detect_secrets.plugins.square_oauth import SquareOAuthDetector
from detect_secrets.plugins.stripe import StripeDetector
from detect_secrets.plugins.telegram_token import TelegramBotTokenDetector
from detect_secrets.plugins.twilio import TwilioKeyDetector

PLACEHOLDER = re.compile(r"\[MASKED:[\w-]+\]")

# ---------------------------------------------------------------------------------------------------------
# Checksums: a number that fails its check digit is an order number, not a card or an ID.


def _luhn_ok(digits: str) -> bool:
    total = 0
    for i, ch in enumerate(reversed(digits)):
        n = int(ch)
        if i % 2 == 1:
            n = n * 2 - 9 if n * 2 > 9 else n * 2
        total += n
    return total % 10 == 0


def _weighted(digits: str, weights: tuple[int, ...]) -> int:
    return sum(int(d) * w for d, w in zip(digits, weights, strict=False))


def cn_resident_id_ok(value: str) -> bool:
    """GB 11643: a valid birth date in digits 7–14 and the ISO 7064 MOD 11-2 check character."""
    value = value.upper()
    try:
        date(int(value[6:10]), int(value[10:12]), int(value[12:14]))
    except ValueError:
        return False
    weights = (7, 9, 10, 5, 8, 4, 2, 1, 6, 3, 7, 9, 10, 5, 8, 4, 2)
    return "10X98765432"[_weighted(value[:17], weights) % 11] == value[17]


def inn_ok(digits: str) -> bool:
    """Russian taxpayer number: one check digit for 10 digits (organisations), two for 12 (people)."""
    if len(digits) == 10:
        return _weighted(digits, (2, 4, 10, 3, 5, 9, 4, 6, 8)) % 11 % 10 == int(digits[9])
    if len(digits) == 12:
        first = _weighted(digits, (7, 2, 4, 10, 3, 5, 9, 4, 6, 8)) % 11 % 10
        second = _weighted(digits, (3, 7, 2, 4, 10, 3, 5, 9, 4, 6, 8)) % 11 % 10
        return first == int(digits[10]) and second == int(digits[11])
    return False


def snils_ok(digits: str) -> bool:
    """Russian pension insurance number: 9 digits and a two-digit check (sum of digit × (9 − position) mod 101)."""
    if len(digits) != 11 or len(set(digits[:9])) == 1:
        return False
    check = _weighted(digits, (9, 8, 7, 6, 5, 4, 3, 2, 1)) % 101
    return (0 if check == 100 else check) == int(digits[9:])


# Lengths per country (SWIFT IBAN registry): the length and mod 97 together leave few false positives.
_IBAN_LENGTHS = {
    cc: int(n)
    for cc, n in (
        item.split(":")
        for item in (
            "AD:24 AE:23 AL:28 AT:20 AZ:28 BA:20 BE:16 BG:22 BH:22 BR:29 BY:28 CH:21 CR:22 CY:28 CZ:24 DE:22 "
            "DK:18 DO:28 EE:20 EG:29 ES:24 FI:18 FO:18 FR:27 GB:22 GE:22 GI:23 GL:18 GR:27 GT:28 HR:21 HU:28 "
            "IE:22 IL:23 IQ:23 IS:26 IT:27 JO:30 KW:30 KZ:20 LB:28 LC:32 LI:21 LT:20 LU:20 LV:21 MC:27 MD:24 "
            "ME:22 MK:19 MR:27 MT:31 MU:30 NL:18 NO:15 PK:24 PL:28 PS:29 PT:25 QA:29 RO:24 RS:22 RU:33 SA:24 "
            "SC:31 SE:24 SI:19 SK:24 SM:27 ST:25 SV:28 TL:23 TN:24 TR:26 UA:29 VA:22 VG:24 XK:20"
        ).split()
    )
}


def iban_ok(compact: str) -> bool:
    """ISO 13616: the country's length and the mod-97 check of the rearranged number."""
    if _IBAN_LENGTHS.get(compact[:2]) != len(compact) or not compact[2:4].isdigit():
        return False
    rearranged = compact[4:] + compact[:4]
    return int("".join(str(int(ch, 36)) for ch in rearranged)) % 97 == 1


def _iban_pattern() -> re.Pattern[str]:
    """One alternative per length: exactly the country's number of characters (spaces between them allowed),
    so an IBAN followed by a word in capitals is still found."""
    by_length: dict[int, list[str]] = {}
    for country, length in _IBAN_LENGTHS.items():
        by_length.setdefault(length, []).append(country)
    alternatives = (f"(?:{'|'.join(cs)})\\d{{2}}(?: ?[A-Z0-9]){{{n - 4}}}" for n, cs in sorted(by_length.items()))
    return re.compile(f"(?<![A-Za-z0-9])(?:{'|'.join(alternatives)})(?![A-Za-z0-9])")


# ---------------------------------------------------------------------------------------------------------
# Rules of our own.

_KEY_NEEDLES = ("pass", "pwd", "secret", "key", "token", "пароль", "密码")
_KEY_WORDS = (
    r"password|passwd|pwd|passphrase|secret|client[_-]?secret|api[_-]?key|apikey|access[_-]?key|"
    r"secret[_-]?key|private[_-]?key|auth[_-]?token|access[_-]?token|refresh[_-]?token|token|пароль|密码"
)
# Values that stand for a secret without being one: placeholders, references, types, empty markers.
_NOT_A_VALUE = re.compile(
    r"(?:str|string|bytes|int|bool|dict|Any|None|SecretStr|Optional\[\w*|Secret)\W*|\$\{?[\w.]+\}?|<[^>]+>|\*+|x+|"
    r"\{.*|%\(?\w*\)?s|null|nil|none|true|false|yes|no|on|off|required|optional|redacted|hidden|masked|"
    r"secretKeyRef|valueFrom|\||>-?",
    re.I,
)
# Code that passes a secret along rather than spelling it: `password=self.password`, `token=get_token()`.
_REFERENCE_ROOT = re.compile(
    r"(?:self|cls|this|args|opts|options|config|conf|cfg|settings|env|os|params|request|req|ctx|context|conn|creds|"
    r"credentials|kwargs|props|process)\.",
    re.I,
)
# Format strings and templates stand for a value: `'SECRET_TOKEN:%s'`, `"token={}"`.
_TEMPLATE = re.compile(r"%[-#0 +]*\d*(?:\.\d+)?[sdrf]|%\(\w+\)[sdr]|\{\w*\}")
_IDENTIFIER_PATH = re.compile(r"[A-Za-z_]\w*(?:\.[A-Za-z_]\w*)*")
_CALL_OR_INDEX = re.compile(r"[A-Za-z_][\w.]*[(\[]")
_PROSE_WORD = re.compile(r"[^\W\d_]+")
# Ideographs and CJK punctuation end a value: "密码：至少12个字符" has none, "使用password: x，如有" ends at "，".
_CJK = "\u3000-\u303f\u3400-\u9fff\uf900-\ufaff\uff00-\uffef"
# Keys that end in a secret word but hold a pagination cursor, or sit inside an ARN (`…:secret:name`).
_NOT_A_SECRET_KEY = re.compile(r"(?i)(?:next|page|continuation|forward|backward|pagination|resume|sync)[\w.-]*token")


def _placeholder(value: str) -> bool:
    """A value with no letter or digit (`([^`), a template or a reference stands for a secret, it is none."""
    return bool(_NOT_A_VALUE.fullmatch(value) or not re.search(r"[^\W_]", value) or _TEMPLATE.search(value))


_IDENTIFIER_RUN = re.compile(r"[\w.-]*")
# A word (or a placeholder that stood for one on an earlier pass) right after a value: the value is prose.
_NEXT_WORD = re.compile(r" (?:[^\W\d_]|\[MASKED:)")


def _key_before(text: str, start: int) -> str:
    """The identifier that ends at `start` (`DB_PASSWORD` for the match `PASSWORD=…`), 64 characters at most:
    read backwards, one step a character (a search for a run that ends the window tries every start in it)."""
    window = text[max(0, start - 64) : start]
    head = _IDENTIFIER_RUN.match(window[::-1])
    return window[len(window) - head.end() :] if head else ""


def _char_before(text: str, end: int) -> str:
    """The last character before `end` that is not white space: walked back, where `text[:end].rstrip()`
    would copy the whole line for every match on it."""
    i = end - 1
    while i >= 0 and text[i].isspace():
        i -= 1
    return text[i] if i >= 0 else ""


def _credential_ok(match: re.Match[str]) -> bool:
    """A `key: value` whose value is a literal secret, not a placeholder, a reference or the next word of prose."""
    value, quote, sep, text = unquote_plus(match.group("value")), match.group("quote"), match.group("sep"), match.string
    prefix = _key_before(text, match.start())
    key, key_start = prefix + match.group("key"), match.start() - len(prefix)
    if _placeholder(value) or _NOT_A_SECRET_KEY.search(key) or text[key_start - 1 : key_start] == ":":
        return False
    if quote:
        return True
    if _PROSE_WORD.fullmatch(value) and _NEXT_WORD.match(text, match.end()):
        return False  # "Password: must be 12 characters" is a sentence, not an assignment
    if "=" in sep and (_CALL_OR_INDEX.match(value) or _REFERENCE_ROOT.match(value)):
        return False
    if _IDENTIFIER_PATH.fullmatch(value) and _code_reference(text, key_start, sep, value, match.end()):
        return False
    # `password=db_password`: a variable handed on, named after what it holds.
    word = re.search(r"(?i)pass|pwd|secret|token|key|пароль|密码", match.group("key"))
    return not ("=" in sep and _IDENTIFIER_PATH.fullmatch(value) and word and word.group(0).lower() in value.lower())


_TYPE_NAME = re.compile(r"(?:[A-Z][a-z]+)+|str|int|float|bytes|bool|dict|list|tuple|set|object|any")


# What a variable or constant passed along looks like: snake_case, CONSTANT_CASE, or a name without digits.
_CODE_NAME = re.compile(r"[a-z_][a-z0-9_.]*|[A-Z_][A-Z0-9_.]*|[A-Za-z_.]+")


def _code_reference(text: str, key_start: int, sep: str, value: str, end: int) -> bool:
    """An identifier after a secret's name in code: a keyword argument (`connect(passwd=PASSWORD)`), a dict
    entry (`{"token": token}`: JSON and YAML would not quote the key alone) or a type (`token: Token | None`)."""
    if "=" in sep and _char_before(text, key_start) in ("(", ",") and _CODE_NAME.fullmatch(value):
        return True  # `user=admin, password=S3cr3tPa55` is a list of assignments: mixed case and digits name no variable
    if sep[:1] in ("'", '"'):
        return True
    return bool(":" in sep and _TYPE_NAME.fullmatch(value) and re.match(r"\s*(?:[\[\]),|]|=[^=])", text[end : end + 3]))


def _entropy(value: str) -> float:
    """detect-secrets' Shannon entropy over the charset that fits the value (hex or base64)."""
    plugin = _HEX if re.fullmatch(r"[0-9a-fA-F]+", value) else _BASE64
    return float(plugin.calculate_shannon_entropy(value))


_HEX, _BASE64 = HexHighEntropyString(), Base64HighEntropyString()
_UUID = re.compile(r"[0-9a-fA-F]{8}-[0-9a-fA-F]{4}-[0-9a-fA-F]{4}-[0-9a-fA-F]{4}-[0-9a-fA-F]{12}")
# Keys ending in "key" that name a lookup key, not a secret one.
_LOOKUP_KEY = re.compile(
    r"(?i)(?:cache|idempotency|partition|routing|sort|lookup|dedupe?|object|s3|bucket|map|hash|range|"
    r"shard|message|event|correlation|i18n|translation|group|label|metric|row|column|table|index|sequence|natural|"
    r"composite|unique|business|public|pub)[_.-]?key$|amz-credential$"
)


def _random_secret(match: re.Match[str]) -> bool:
    """A value under a key that may hold a secret (`SIGNING_KEY`, `salt`, `sig`) masked only when it looks random."""
    value, key = match.group("value"), match.group("key")
    if _LOOKUP_KEY.search(key) or _UUID.fullmatch(value) or not (re.search(r"\d", value) and re.search(r"[A-Za-z]", value)):
        return False
    if key.lower() == "key" and not re.fullmatch(r"[A-Za-z0-9+/=]+", value):
        return False  # a bare `key:` holding a path or a name (`key: logs/2019.gz`) is an object key
    if re.fullmatch(r"[a-z]+(?:[_.-][a-z0-9]+)*", value):  # snake/kebab words: a name, not a key
        return False
    # detect-secrets' limits (hex 3.0, base64 4.5) are for long strings; a short random one cannot reach 4.5.
    limit = min(3.0 if re.fullmatch(r"[0-9a-fA-F]+", value) else 4.5, 0.8 * math.log2(len(value)))
    return _entropy(value) > limit


def _card_ok(match: re.Match[str]) -> bool:
    digits = re.sub(r"\D", "", match.group(0))
    return 13 <= len(digits) <= 19 and _luhn_ok(digits)


def _ru_phone_ok(match: re.Match[str]) -> bool:
    """`8` then ten digits is a phone only when written as one (separators) or when it is a mobile (8 9xx …)."""
    number = match.group(0)
    return number.startswith("+7") or not number.isdigit() or number[1] == "9"


def _e164_ok(match: re.Match[str]) -> bool:
    return 10 <= len(re.sub(r"\D", "", match.group(0))) <= 15


# Documentation domains (RFC 2606/6761) and role mailboxes are not personal data.
_DOC_DOMAIN = re.compile(r"(?i)(?:^|\.)(?:example\.(?:com|net|org)|[\w-]+\.(?:example|test|invalid|localhost))$|^localhost$")
# `ssh user@ec2-198-51-100-1.compute-1.amazonaws.com`: a login on a host named after its address.
_HOST_NAME = re.compile(r"\d{1,3}-\d{1,3}-\d{1,3}-\d{1,3}")
_ROLE_MAILBOX = re.compile(
    # A role anywhere in the name: `payments-oncall@`, `ec2-efa-security@`, `no-reply@`.
    r"(?i)(?:[\w.+-]*[-_.])?(?:no-?reply|do-?not-?reply|postmaster|hostmaster|webmaster|abuse|admin|administrator|"
    r"support|helpdesk|security|privacy|compliance|legal|on-?call|alerts?|notifications?|devops|sre|ops|noc|soc|team|"
    r"billing|mailer-daemon)(?:[-_.+][\w.+-]*)?|"
    # Words that are also names (Dev, Jobs) count only first; logins of cloud images (`ssh ec2-user@host`).
    r"(?:info|contact|sales|help|it|hr|jobs|careers|press|marketing|feedback|service|root|git|test|user|username|"
    r"ec2-user|ubuntu|centos|debian|fedora|core|azureuser|opc|bitnami)(?:[-_.+][\w.+-]*)?|"
    r"[\w.+-]*[-_.](?:users|devel|dev|announce|discuss|list|commits|bugs)"  # mailing lists
)


def _personal_email(match: re.Match[str]) -> bool:
    domain = match.group("domain")
    if _DOC_DOMAIN.search(domain) or domain.startswith("lists.") or _HOST_NAME.search(domain):
        return False
    return not _ROLE_MAILBOX.fullmatch(match.group("local"))


def _digits_ok(check: Callable[[str], bool]) -> Callable[[re.Match[str]], bool]:
    return lambda m: check(re.sub(r"\D", "", m.group(m.lastindex or 0)))


@dataclass(frozen=True)
class Rule:
    kind: str
    pattern: re.Pattern[str]
    # Which group holds the secret (0: the whole match); the rest of the match is kept for context.
    group: int | str = 0
    accept: Callable[[re.Match[str]], bool] | None = None
    # Lowercase strings one of which every match contains: text without any skips the pattern (masking runs
    # on every chunk and every tool output, so "nothing to mask" must be fast, and a substring test is
    # many times faster than a case-insensitive regex).
    needles: tuple[str, ...] = ()
    # A cheap pattern the text must match too, for rules whose own pattern is slow.
    hint: re.Pattern[str] | None = None


_A = re.ASCII  # \b and \w by ASCII: a token right after a Chinese character still starts a word
# Numeric patterns put their lookbehind after the first character (`\d(?<![\d-]\d)…`): Python's re then
# jumps between digits instead of testing the lookbehind at every position, several times faster.
# A placeholder's brackets count as letters at a token's edge: `…x[MASKED:api-key]` stands for `…xAIza…`, and a
# token glued to it was glued to the secret before (`AIza…xoxb-…`). Read as a boundary, each pass would peel
# one more token off a glued run.
_NOT_ALNUM_BEFORE = r"(?<![A-Za-z0-9\]])"
_NOT_ALNUM_AFTER = r"(?![A-Za-z0-9\[])"
_WORD_START = r"(?<![\w\]])"  # `\b` before a word character, a placeholder's `]` counted as one
_LETTER_BEFORE = r"(?<![A-Za-zА-Яа-яЁё])"
_LETTER_AFTER = r"(?![A-Za-zА-Яа-яЁё])"

_KEY_GAP = r"(?:\\[nr]|[\s\"'+,])"  # between the lines of a key: newlines, escaped ones, string concatenation
_PRIVATE_KEY = Rule(
    "private-key",
    # The header, then the body (at least one base64 line: a header named in prose is no key), then the END
    # line when there is one: a key cut off by a chunk or a capped log goes through its last base64 line
    # (a short one only when padded: `payment` after a cut-off key is a word).
    re.compile(
        rf"-{{4,5}} ?BEGIN ((?:[A-Z0-9]+ )*PRIVATE KEY(?: BLOCK)?) ?-{{4,5}}"
        rf"(?:{_KEY_GAP}+(?:[A-Za-z0-9+/=]{{16,}}|[A-Z][A-Za-z-]+: [^\n\\\"]*))+"
        # A short last line: before the END line, or, when the key was cut off, padded as base64 ends.
        rf"(?:{_KEY_GAP}+(?:[A-Za-z0-9+/=]{{1,15}}(?={_KEY_GAP}*-{{4,5}} ?END)|[A-Za-z0-9+/]{{1,14}}={{1,2}}(?![A-Za-z0-9+/=])))?"
        rf"(?:{_KEY_GAP}*-{{4,5}} ?END \1 ?-{{4,5}})?"
        # PuTTY's MAC line closes the key; it is looked for only up to the next key's header, so text full of
        # headers and no MAC is scanned once, not once per header.
        r"|PuTTY-User-Key-File-\d: (?:(?!PuTTY-User-Key-File-).){0,65536}?Private-MAC: \w+",
        re.S,
    ),
    # detect-secrets' headers, and any "… PRIVATE KEY" (PKCS#8 "ENCRYPTED PRIVATE KEY" is not in its list).
    needles=(*{p.pattern.lower() for p in PrivateKeyDetector.denylist}, "private key"),
)

TOKEN_RULES: tuple[Rule, ...] = (
    # The header stops at a `-eyJ` that starts another candidate: each stretch of text is scanned by one start.
    Rule("jwt", re.compile(_WORD_START + r"eyJ(?:\w|-(?!eyJ)){8,}+\.[\w-]{8,}+\.[\w-]{8,}+", _A), needles=("eyj",)),
    Rule(
        "aws-access-key",
        re.compile(rf"{_NOT_ALNUM_BEFORE}(?:AKIA|ASIA|ABIA|ACCA|A3T[A-Z0-9])[0-9A-Z]{{16}}{_NOT_ALNUM_AFTER}"),
        needles=("akia", "asia", "abia", "acca", "a3t"),
    ),
    Rule(
        "aws-secret-key",
        re.compile(
            r"(?i)secret[ _-]?access[ _-]?key[^\n]{0,30}?[\s:=`'\"(]([A-Za-z0-9/+]{40})(?![A-Za-z0-9/+])",
        ),
        group=1,
        # A real key mixes cases and digits; a 40-letter word after "secret access key" is prose.
        accept=lambda m: all(re.search(c, m.group(1)) for c in ("[a-z]", "[A-Z]", "[0-9]")),
        needles=("access",),
    ),
    Rule(
        "github-token",
        re.compile(rf"{_NOT_ALNUM_BEFORE}(?:gh[pousr]_[A-Za-z0-9]{{30,}}|github_pat_[A-Za-z0-9_]{{40,}})"),
        needles=("ghp_", "gho_", "ghu_", "ghs_", "ghr_", "github_pat_"),
    ),
    Rule(
        "gitlab-token", re.compile(_WORD_START + r"gl(?:pat|dt|rt|ptt|ft|soat|cbt|imt|agent|oas)-[\w-]{20,}", _A), needles=("gl",)
    ),
    Rule("slack-token", re.compile(_WORD_START + r"xox[aboprse]-[A-Za-z0-9-]{10,}", _A), needles=("xox",)),
    Rule(
        "api-key",
        re.compile(
            rf"{_NOT_ALNUM_BEFORE}(?:(?:sk|rk|pk)_(?:live|test)_[A-Za-z0-9]{{16,}}|sk-[A-Za-z0-9_-]{{20,}}|"
            r"AIza[0-9A-Za-z_-]{35}|hf_[A-Za-z]{30,}|dckr_pat_[\w-]{20,}|glsa_[A-Za-z0-9_]{32,}|"
            r"npm_[A-Za-z0-9]{36}|SG\.[\w-]{16,}\.[\w-]{20,})"
        ),
        needles=("_live_", "_test_", "sk-", "aiza", "hf_", "dckr_pat_", "glsa_", "npm_", "sg."),
    ),
    Rule("vault-token", re.compile(rf"{_NOT_ALNUM_BEFORE}hv[sbr]\.[A-Za-z0-9_-]{{24,}}"), needles=("hvs.", "hvb.", "hvr.")),
    Rule("bearer-token", re.compile(r"\b[Bb]earer\s+([A-Za-z0-9._~+/-]{16,}=*)", _A), group=1, needles=("bearer",)),
    Rule(
        "basic-auth",
        re.compile(r"(?i)authorization[\"']?\s*[:=]\s*[\"']?basic\s+([A-Za-z0-9+/]{8,}={0,2})"),
        group=1,
        needles=("basic",),
    ),
    # A scheme is short (RFC 3986 allows any length; none registered is over 32): `a.a.a…://` is not scanned from
    # every dot.
    Rule("url-password", re.compile(r"\b[a-z][a-z0-9+.-]{0,31}://[^\s:/@]+:([^\s@/]+)@", _A), group=1, needles=("://",)),
    Rule(
        "url-password",
        re.compile(r"(?<!\S)(?:-u|--user)\s+[\"']?[^\s:\"'$]+:([^\s\"']+)"),
        group=1,
        needles=("-u", "--user"),
        accept=lambda m: not (m.group(1).isdigit() or m.group(1).startswith("$")),  # `docker run -u 1000:1000`
    ),
    Rule(
        "azure-storage-key",
        re.compile(r"(?i)\b(?:Account|SharedAccess)Key\s*=\s*([^;\s\"'<>]{8,})", _A),
        group=1,
        needles=("accesskey", "accountkey"),
    ),
    Rule(
        "url-signature",
        re.compile(r"(?i)[?&;](?:sig|signature|x-amz-signature|x-amz-security-token|x-goog-signature)=([^&#\s\"'<>]{16,})"),
        group=1,
        needles=("sig", "x-amz-security-token"),
    ),
)

CREDENTIAL_RULES: tuple[Rule, ...] = (
    Rule(
        "credential",
        re.compile(
            # A quote may come escaped: `"cmd": "password = \\"…\\""` in JSON.
            rf"(?i)(?P<key>{_KEY_WORDS})(?P<sep>[\"']?[ \t]*[:=：][ \t]*)(?P<quote>\\?[\"']|)(?!\[MASKED:)"
            # `&` ends a value only where a query parameter follows (`?password=…&next=…`), a backslash only
            # where it escapes the closing quote.
            rf"(?P<value>(?:[^\s\"'`,;&)\]}}\\{_CJK}]|&(?![\w.%-]+=)|\\(?![\"'])){{3,}})"
        ),
        group="value",
        needles=_KEY_NEEDLES,
        accept=_credential_ok,
    ),
    Rule(
        "credential",
        re.compile(r"(?<![\w-])--(?:password|passwd|token|secret|api-key|client-secret)[= ][\"']?(?![$-])([^\s\"']{3,})"),
        group=1,
        needles=("--",),
        accept=lambda m: not _placeholder(m.group(1)),
    ),
    Rule(
        "high-entropy-secret",
        re.compile(
            r"(?i)(?<![A-Za-z0-9_.-])(?P<key>[A-Za-z0-9_.-]*(?:key|salt|cookie|credentials?|auth))[\"']?[ \t]*[:=][ \t]*"
            r"[\"']?(?!\[MASKED:)(?P<value>[A-Za-z0-9+/=_\-.~]{15,}[A-Za-z0-9+/=_\-~])",
            _A,
        ),
        group="value",
        needles=("key", "salt", "cookie", "credential", "auth"),
        accept=_random_secret,
    ),
)

PII_RULES: tuple[Rule, ...] = (
    Rule(
        "iban",
        _iban_pattern(),
        accept=lambda m: iban_ok(m.group(0).replace(" ", "")),
        hint=re.compile(r"[A-Z][A-Z]\d\d(?: ?[A-Z0-9]){11}"),
    ),
    Rule(
        "cn-resident-id",
        re.compile(
            r"(?<![0-9A-Za-z])[1-8]\d{5}(?:18|19|20)\d{2}(?:0[1-9]|1[0-2])(?:0[1-9]|[12]\d|3[01])\d{3}[\dXx](?![0-9A-Za-z])"
        ),
        accept=lambda m: cn_resident_id_ok(m.group(0)),
    ),
    Rule(
        "card-number",
        # Issuer ranges start 2–6; groups of 4 (Amex 4-6-5) or none: two 8-digit ids in a row are not a card.
        re.compile(
            r"(?<![A-Za-z0-9._/-])(?:[2-6]\d{12,18}|[2-6]\d{3}([ -])\d{4}\1\d{4}\1\d{1,7}|3[47]\d{2}([ -])\d{6}\2\d{5})"
            r"(?![A-Za-z0-9_/-]|[.,]\d)"
        ),
        accept=_card_ok,
    ),
    Rule(
        "inn",
        re.compile(rf"(?i){_LETTER_BEFORE}(?:инн|inn|tin){_LETTER_AFTER}[^\d\n]{{0,20}}?(?<!\d)(\d{{12}}|\d{{10}})(?!\d)"),
        group=1,
        needles=("инн", "inn", "tin"),
        accept=_digits_ok(inn_ok),
    ),
    Rule(
        "snils",
        re.compile(
            rf"(?i){_LETTER_BEFORE}(?:снилс|snils){_LETTER_AFTER}[^\d\n]{{0,20}}?"
            r"(?<!\d)(\d{3}[ -]?\d{3}[ -]?\d{3}[ -]?\d{2})(?!\d)"
        ),
        group=1,
        needles=("снилс", "snils"),
        accept=_digits_ok(snils_ok),
    ),
    Rule("snils", re.compile(r"\d(?<![\d-]\d)\d{2}-\d{3}-\d{3}[ -]\d{2}(?![\d-])"), accept=_digits_ok(snils_ok)),
    Rule(
        "ru-passport",
        re.compile(r"(?i)серия\s*(\d{2}\s?\d{2}[,\s]*(?:номер|№|N)?\s*\d{6})(?!\d)"),
        group=1,
        needles=("серия",),
    ),
    Rule(
        "ru-passport",
        re.compile(
            rf"(?i){_LETTER_BEFORE}(?:паспорт\w*|passport\w*)[^\d\n]{{0,25}}?(?<!\d)(\d{{2}}\s?\d{{2}}\s?(?:№\s?)?\d{{6}})(?!\d)"
        ),
        group=1,
        needles=("паспорт", "passport"),
    ),
    Rule("ru-passport", re.compile(r"\d(?<![\d.:,-]\d)\d \d{2} \d{6}(?![\d.:,-])")),
    Rule("ssn", re.compile(r"\d(?<!\d\d)\d{2}(?<!000|666)(?<!9\d\d)-(?!00)\d{2}-(?!0000)\d{4}(?!\d)")),
    Rule(
        "phone",
        re.compile(
            r"(?:\+7|8)(?<![A-Za-z0-9+.-]\+7)(?<![A-Za-z0-9+.-]8)"
            r"(?:[ -]?\(?\d{3}\)?)(?:[ -]?\d{3})(?:[ -]?\d{2}){2}(?![A-Za-z0-9])"
        ),
        accept=_ru_phone_ok,
    ),
    # Not a size: 17179869184 bytes is 16 GiB (sizes in bytes are the common 11-digit numbers in ops text).
    Rule(
        "phone",
        re.compile(r"(?<![A-Za-z0-9+.-])(?:(?:\+|00)86[ -]?)?1[3-9]\d(?:[ -]?\d{4}){2}(?![A-Za-z0-9]|\s*(?:bytes?\b|B\b|字节))"),
    ),
    Rule("phone", re.compile(r"(?<![A-Za-z0-9+])\+\d{1,3}(?:[ .-]?\(?\d{1,5}\)?){1,6}(?!\d)"), accept=_e164_ok),
    Rule(
        "phone",
        re.compile(
            r"\((?<!\d\()\d{3}\)\s?\d{3}-\d{4}(?!\d)|\d(?<![\d-]\d)\d{2}-\d{3}-\d{4}(?![\d-])|\d(?<![\d.]\d)\d{2}\.\d{3}\.\d{4}(?![\d.])"
        ),
    ),
    Rule(
        "email",
        re.compile(
            # RFC 5321 caps the local part at 64 characters: the role-mailbox test on it stays short.
            r"(?<![A-Za-z0-9._%+-])(?P<local>[A-Za-z0-9][A-Za-z0-9._%+-]{0,63})@"
            r"(?P<domain>[A-Za-z0-9-]+(?:\.[A-Za-z0-9-]+)*\.[A-Za-z]{2,})(?![A-Za-z0-9-])"
        ),
        needles=("@",),
        accept=_personal_email,
    ),
)

# Kept for callers that list the rules; the order of application is the one in `mask_secrets`.
RULES: tuple[Rule, ...] = (_PRIVATE_KEY, *TOKEN_RULES, *CREDENTIAL_RULES, *PII_RULES)

# ---------------------------------------------------------------------------------------------------------
# detect-secrets: its regex plugins, each with the kind it masks as.


# Where detect-secrets' own patterns scan far from a start and then fail, text made of starts (`eyJeyJ…`,
# `sk-sk-…`, `//…//`, a key name and a run of spaces) costs the square of its length. These find the same
# tokens scanning each stretch once: a start only where a token may begin (not inside a word, as
# `_plugin_spans` requires anyway), a header that stops at the next start, possessive runs, one way to
# read a run of spaces instead of every split of it between ` *`, ` +` and ` *`.
_ASSIGNMENT_GAP = "(?: *)(?:=|:|:=|=>| +|::)(?: *)"
_LINEAR_ASSIGNMENT_GAP = "(?: *+(?:=|:|:=|=>|::) *+| ++)"
_LINEAR_PATTERNS: dict[type[RegexBasedDetector], list[re.Pattern[str]]] = {
    JwtTokenDetector: [re.compile(r"(?<![A-Za-z0-9])eyJ(?:[A-Za-z0-9]|[_=-](?!eyJ))++\.[A-Za-z0-9_=-]++\.?")],
    # The 20 characters before `T3BlbkFJ` checked behind it: one test per character, not twenty.
    OpenAIDetector: [
        re.compile(r"(?<![A-Za-z0-9])sk-(?:[A-Za-z0-9]|[_-](?!sk-))*?T3BlbkFJ(?<=[A-Za-z0-9]{20}T3BlbkFJ)[A-Za-z0-9]{20}")
    ],
    # The registry's `//host/` before `:_authToken=` is context, not the secret: anchored on the rare part.
    NpmDetector: [re.compile(r"/:_authToken=\s*+((npm_.+)|([A-Fa-f0-9-]{36}))")],
}


def _plugin_patterns(plugin: RegexBasedDetector) -> list[re.Pattern[str]]:
    """The plugin's patterns, each in a form whose run time grows linearly with the text."""
    if type(plugin) in _LINEAR_PATTERNS:
        return _LINEAR_PATTERNS[type(plugin)]
    return [re.compile(p.pattern.replace(_ASSIGNMENT_GAP, _LINEAR_ASSIGNMENT_GAP), p.flags) for p in plugin.denylist]


@dataclass(frozen=True)
class Plugin:
    detector: RegexBasedDetector
    kind: str
    # As for rules: one of these must be in the lowercased text (none: always run), and `hint` must match.
    needles: tuple[str, ...] = ()
    hint: re.Pattern[str] | None = None
    # The detector's patterns as `_plugin_patterns` rewrites them.
    patterns: tuple[re.Pattern[str], ...] = ()


def _plugin(cls: type[RegexBasedDetector], kind: str, *needles: str, hint: str | None = None) -> Plugin:
    detector = cls()
    return Plugin(detector, kind, needles, re.compile(hint) if hint else None, tuple(_plugin_patterns(detector)))


_SECRET_WORDS = ("key", "pwd", "pass", "token")
PLUGINS: tuple[Plugin, ...] = (
    _plugin(AWSKeyDetector, "aws-access-key", "akia", "asia", "abia", "acca", "a3t", "aws"),
    _plugin(AzureStorageKeyDetector, "azure-storage-key", "accountkey="),
    _plugin(BasicAuthDetector, "url-password", "://"),
    _plugin(GitHubTokenDetector, "github-token", "ghp_", "gho_", "ghu_", "ghs_", "ghr_"),
    _plugin(
        GitLabTokenDetector,
        "gitlab-token",
        "glpat-",
        "gldt-",
        "glft-",
        "glsoat-",
        "glrt-",
        "gr1348941",
        "glcbt-",
        "glimt-",
        "glptt-",
        "glagent-",
        "gloas-",
    ),  # fmt: skip
    _plugin(JwtTokenDetector, "jwt", "eyj"),
    _plugin(NpmDetector, "npm-token", "_authtoken"),
    _plugin(OpenAIDetector, "api-key", "t3blbkfj"),
    _plugin(PypiTokenDetector, "pypi-token", "pypi-age"),
    _plugin(SendGridDetector, "api-key", "sg."),
    _plugin(SlackDetector, "slack-token", "xox", "hooks.slack.com"),
    _plugin(StripeDetector, "api-key", "_live_"),
    _plugin(TwilioKeyDetector, "twilio-key"),
    _plugin(MailchimpDetector, "api-key", "-us"),
    _plugin(TelegramBotTokenDetector, "telegram-token", ":"),
    _plugin(DiscordBotTokenDetector, "discord-token", "."),
    _plugin(SquareOAuthDetector, "api-key", "sq0csp-"),
    _plugin(ArtifactoryDetector, "artifactory-token", hint=r"AKC|AP[\dA-F]"),
    # Their patterns are case-insensitive with optional prefixes (slow): gated on the value they require.
    _plugin(IbmCloudIamDetector, "ibm-cloud-key", *_SECRET_WORDS, hint=r"[a-zA-Z0-9_\-]{44}"),
    _plugin(IbmCosHmacDetector, "ibm-cloud-key", "secret", hint=r"[a-f0-9]{48}"),
    _plugin(SoftlayerDetector, "softlayer-key", "sl", hint=r"(?i)(?:softlayer|sl)[_-]?(?:api)?[_-]?(?:key|pwd|pass|token)"),
    _plugin(
        CloudantDetector, "cloudant-key", "cl", hint=r"(?i)cl(?:ou(?:dant)?)?[_-]?(?:api)?(?:key|pwd|pw|pass|token)|cloudant\.com"
    ),
)
# A plugin's match can stop inside a token (JWT's lazy signature, fixed lengths): mask to the token's end.
_TOKEN_TAIL = re.compile(r"[A-Za-z0-9_\-+/=]*")
_KEY_PREFIX = re.compile(r"(?i)[a-z]*key=")  # `AccountKey=` in Azure's match: the name stays readable
# Every word of detect-secrets' keyword list (`api_?key`, `db_?pass`, `contraseña`, ...) contains one of these.
_KEYWORD_NEEDLES: tuple[str, ...] = ("key", "pass", "pwd", "secret", "contrase")
_KEYWORD_NEEDLES += tuple(w.replace("_?", "") for w in KEYWORD_DENYLIST if not any(n in w for n in _KEYWORD_NEEDLES))
# Keys that end in a secret word's suffix but name where a secret is, not what it is.
_SECRET_REFERENCE_KEY = re.compile(
    r"(?i)(?:name|names|ref|file|path|dir|id|ids|type|length|len|hint|prompt|policy|label|field|arn|version|provider|"
    r"manager|store|mode|template|format|regex|pattern|header|param|size|count|ttl|expiry|expires|rotation|enabled|"
    r"required|reset|question|min|max|strength|input|placeholder|env|var|variable|url|uri|endpoint|location|namespace)s?$"
)


def _plugin_spans(plugin: RegexBasedDetector, patterns: Sequence[re.Pattern[str]], text: str) -> Iterator[tuple[int, int]]:
    """Where the plugin's patterns find a secret: each non-empty group, as its `analyze_string` yields them."""
    validated = type(plugin).analyze_string is not RegexBasedDetector.analyze_string
    for regex in patterns:
        reach = 0  # the end of the last span yielded, its tail included
        for match in regex.finditer(text):
            # Inside a token already found (`AKIA…AKIA…` in one run): its span holds this one, and scanning the
            # run's tail again for every match in it would cost the square of the run.
            if match.end() <= reach:
                continue
            groups = [i for i in range(1, (regex.groups or 0) + 1) if match.group(i)] or [0]
            for i in groups:
                if validated and match.group(i) not in set(plugin.analyze_string(match.group(i))):
                    continue
                start, end = _trim(text, *match.span(i))
                # Inside a longer word (an ARN's account digits, a hex id) the pattern found no token.
                if start > 0 and text[start - 1].isascii() and (text[start - 1].isalnum() or text[start - 1] == "]"):
                    continue
                tail = _TOKEN_TAIL.match(text, end)
                end = tail.end() if tail else end
                reach = max(reach, end)
                yield start, end


def _trim(text: str, start: int, end: int) -> tuple[int, int]:
    while start < end and text[start] in " \t\"'=:":
        start += 1
    while end > start and text[end - 1] in " \t\"'":
        end -= 1
    prefix = _KEY_PREFIX.match(text, start, end)
    if prefix and end - prefix.end() >= 8:
        start = prefix.end()
    return start, end


# detect-secrets' keyword plugin, quotes required (`password = "…"`, `"…" == password`, `secret: '…'`,
# `private_key "…";`, `pwd => "…"`), in a linear form. Its own patterns start at every keyword inside a
# word and run `\w*` to the word's end (a word of repeated keywords costs its length squared), and let a
# backquoted value run to the last backquote before the line's next quote, from every backquote.
# Here each word is read once, from its first keyword, and a value ends at its first closing quote.
_KEYWORD = "|".join(KEYWORD_DENYLIST)
_KEYWORD_IN_WORD = re.compile(_KEYWORD, re.I)
_WORD_REST = re.compile(r"\w*")
# Starts with a word character, does not end in `,` or a backquote, and holds no quote (nor a backquote
# when backquoted): detect-secrets' SECRET.
_QUOTED_VALUE = r"(?P<q>['\"`])(?P<value>(?=\w)(?:(?<=`)[^\v'\"`]*+|(?<!`)[^\v'\"]*+)(?<![,`]))(?P=q)"
# What follows the word that holds the keyword.
_AFTER_KEYWORD: tuple[re.Pattern[str], ...] = (
    re.compile(rf"(?:[]'\"]{{0,2}})?:\s*+{_QUOTED_VALUE}"),  # secret: "…"
    re.compile(rf"(?:[]'\"]{{0,2}})?\s*+(?:={{1,3}}|!==?)\s*+{_QUOTED_VALUE}"),  # password = "…", != "…"
    re.compile(rf"[^\s]{{0,50}}?\s*+{_QUOTED_VALUE};"),  # private_key "…";
    re.compile(rf"(?:[]'\"]{{0,2}})?\s*+=>?\s*+{_QUOTED_VALUE}"),  # pwd => "…"
)
# "…" == password: case-sensitive, as detect-secrets has it.
_COMPARED_TO_KEYWORD = re.compile(rf"{_QUOTED_VALUE}\s*+[!=]{{2,3}}\s*+\w*?(?:{_KEYWORD})")
_KEY_NAME = re.compile(r"[\w.-]*")


def _keyword_spans(line: str) -> Iterator[tuple[int, int]]:
    """detect-secrets' keyword plugin (quotes required: `password = "…"`), minus names and placeholders."""
    word_end = 0
    for keyword in _KEYWORD_IN_WORD.finditer(line):
        if keyword.start() < word_end:
            continue  # a later keyword in a word already read
        rest = _WORD_REST.match(line, keyword.end())
        word_end = rest.end() if rest else keyword.end()
        key = _KEY_NAME.match(line, keyword.start())
        if key and _SECRET_REFERENCE_KEY.search(key.group(0)):
            continue
        for after in _AFTER_KEYWORD:
            match = after.match(line, word_end)
            if match and not _placeholder(match.group("value")):
                yield match.span("value")
    for match in _COMPARED_TO_KEYWORD.finditer(line):
        if not _placeholder(match.group("value")):
            yield match.span("value")


def _mask_spans(text: str, spans: list[tuple[int, int]], kind: str, counts: Counter[str]) -> str:
    """Replace each span (merged where they overlap) unless it is already a placeholder."""
    out, last = [], 0
    for start, end in _merge(spans):
        if start < last or PLACEHOLDER.fullmatch(text[start:end]) or "[MASKED:" in text[start:end]:
            continue
        out.append(text[last:start] + f"[MASKED:{kind}]")
        counts[kind] += 1
        last = end
    return "".join(out) + text[last:] if out else text


def _merge(spans: list[tuple[int, int]]) -> list[tuple[int, int]]:
    merged: list[tuple[int, int]] = []
    for start, end in sorted(spans):
        if merged and start <= merged[-1][1]:
            merged[-1] = (merged[-1][0], max(end, merged[-1][1]))
        elif end > start:
            merged.append((start, end))
    return merged


def _found(needles: tuple[str, ...], hint: re.Pattern[str] | None, text: str, lower: str) -> bool:
    return (not needles or any(n in lower for n in needles)) and (hint is None or hint.search(text) is not None)


def _mask_with_plugins(text: str, lower: str, counts: Counter[str]) -> str:
    for plugin in PLUGINS:
        if _found(plugin.needles, plugin.hint, text, lower):
            spans = list(_plugin_spans(plugin.detector, plugin.patterns, text))
            if spans:
                text = _mask_spans(text, spans, plugin.kind, counts)
    return text


_LINE_NEEDLES = tuple(dict.fromkeys((*_KEYWORD_NEEDLES, *(n for rule in CREDENTIAL_RULES for n in rule.needles))))


def _mask_lines(text: str, lower: str, counts: Counter[str]) -> str:
    """Assignments (`key = value`, `"key": "value"`) never span lines: their patterns, slow as they are
    case-insensitive, run only on the lines that hold one of their words."""
    if not any(n in lower for n in _LINE_NEEDLES):
        return text
    lines = text.split("\n")
    for i, line in enumerate(lines):
        low = line.lower()
        if not any(n in low for n in _LINE_NEEDLES):
            continue
        if any(n in low for n in _KEYWORD_NEEDLES) and any(q in line for q in "\"'`"):  # its patterns need quotes
            line = _mask_spans(line, list(_keyword_spans(line)), "credential", counts)
        for rule in CREDENTIAL_RULES:
            line = _apply(rule, line, low, counts)
        lines[i] = line
    return "\n".join(lines)


# ---------------------------------------------------------------------------------------------------------
# Percent-encoded query values: decoded, masked with their parameter name, replaced whole.

_ENCODED_PARAM = re.compile(r"(?<=[?&;])([\w.%\-\[\]]+=)([^&#\s\"'<>]*)")
_PERCENT = re.compile(r"%[0-9A-Fa-f]{2}")


def _mask_encoded_params(text: str, counts: Counter[str]) -> str:
    def replace(match: re.Match[str]) -> str:
        if not _PERCENT.search(match.group(0)):
            return match.group(0)
        name = unquote_plus(match.group(1))
        param = name + unquote_plus(match.group(2))
        masked, found = (_mask_short_param if len(param) <= 512 else _mask_param)(param)
        if not found:
            return match.group(0)
        counts.update(dict(found))
        placeholder = f"[MASKED:{found[0][0]}]"
        # A secret in the name (`?ghp_%41…=x`) goes with it: keeping the name and masking the value would leave
        # the secret for the next pass to find again.
        return f"{match.group(1)}{placeholder}" if masked.startswith(name) else placeholder

    return _ENCODED_PARAM.sub(replace, text) if _PERCENT.search(text) else text


def _mask_param(param: str) -> tuple[str, tuple[tuple[str, int], ...]]:
    """One decoded `name=value`, masked, and what was found in it."""
    result = _mask_once(param, encoded=False)
    return result.text, tuple(result.counts.items())


# Short parameters cached: a URL repeated in a log repeats its parameters.
_mask_short_param = functools.lru_cache(maxsize=4096)(_mask_param)


# ---------------------------------------------------------------------------------------------------------
# Kubernetes Secret manifests.

# `data:` alone on its line (a comment after it allowed), also as a list item.
_SECRET_DATA = re.compile(r"(?P<indent>[ \t]*(?:-[ \t]+)?)(?:data|stringData):[ \t]*(?:#.*)?\r?")
_KIND_SECRET = re.compile(r"^kind:\s*Secret\s*$", re.M)


@dataclass(frozen=True)
class MaskResult:
    text: str
    counts: dict[str, int]


# A pass can leave something for the next: masking a token turns the text glued to it into a word of its
# own (`(415) 555-2671(415) 555-2671`: the second number follows a digit, then a placeholder). Passes
# repeat while they find something, up to this many; text still changing after them is masked line by line.
_MAX_PASSES = 4
_UNSTABLE = "[MASKED:unstable]"


def mask_secrets(text: str) -> MaskResult:
    """Replace every secret with `[MASKED:kind]`; return the text and how many of each kind were found.

    Idempotent: the text returned masks to itself, and `find_secrets` finds nothing in it. A pass over text
    without secrets changes nothing and is the only one; after a pass that masked something, the next
    checks that nothing is left. Where passes keep finding more, each line something is still found on
    becomes `[MASKED:unstable]`, and if even that leaves a finding (a key across lines), the whole text does.
    """
    total: Counter[str] = Counter()
    for _ in range(_MAX_PASSES):
        result = _mask_once(text, encoded=True)
        if not result.counts:
            return MaskResult(text, dict(total))
        total.update(result.counts)
        text = result.text
    text = _mask_unstable_lines(text, total)
    if _mask_once(text, encoded=True).counts:
        total["unstable"] += 1
        text = _UNSTABLE
    return MaskResult(text, dict(total))


def _mask_unstable_lines(text: str, counts: Counter[str]) -> str:
    """Each line that a pass on its own still finds something on, replaced whole."""
    lines = text.split("\n")
    for i, line in enumerate(lines):
        if _mask_once(line, encoded=True).counts:
            lines[i] = _UNSTABLE
            counts["unstable"] += 1
    return "\n".join(lines)


def find_secrets(text: str) -> list[str]:
    """Kinds of secrets still present in `text` (empty for masked text); used by the asset checks."""
    return [kind for kind, n in mask_secrets(text).counts.items() for _ in range(n)]


def _mask_once(text: str, encoded: bool) -> MaskResult:
    """One pass of every rule, in the order of the module's docstring."""
    counts: Counter[str] = Counter()
    # Needles are looked up in the text as it came: placeholders added on the way are no reason to look.
    lower = text.lower()
    text = _mask_kubernetes_secret_data(text, counts)
    # A private key first: its body must go whole, before any token pattern takes a piece of it.
    text = _apply(_PRIVATE_KEY, text, lower, counts)
    if encoded:
        text = _mask_encoded_params(text, counts)
    text = _mask_with_plugins(text, lower, counts)
    for rule in TOKEN_RULES:
        text = _apply(rule, text, lower, counts)
    text = _mask_lines(text, lower, counts)
    for rule in PII_RULES:
        text = _apply(rule, text, lower, counts)
    return MaskResult(text, dict(counts))


def _apply(rule: Rule, text: str, lower: str, counts: Counter[str]) -> str:
    if not _found(rule.needles, rule.hint, text, lower):
        return text
    return rule.pattern.sub(lambda m: _replace(m, rule, counts), text)


def _replace(match: re.Match[str], rule: Rule, counts: Counter[str]) -> str:
    secret = match.group(rule.group)
    # Masking is idempotent: a placeholder from an earlier pass is not a secret.
    if secret is None or PLACEHOLDER.fullmatch(secret) or (rule.accept is not None and not rule.accept(match)):
        return match.group(0)
    if "[MASKED:" in secret and rule is not _PRIVATE_KEY:
        return match.group(0)
    counts[rule.kind] += 1
    start, end = match.start(rule.group) - match.start(), match.end(rule.group) - match.start()
    whole = match.group(0)
    return f"{whole[:start]}[MASKED:{rule.kind}]{whole[end:]}"


def _mask_kubernetes_secret_data(text: str, counts: Counter[str]) -> str:
    """Values under `data:`/`stringData:` of a `kind: Secret` manifest are secrets whatever their keys."""
    if not _KIND_SECRET.search(text):
        return text
    masker = _SecretData(counts)
    out: list[str] = []
    for line in text.split("\n"):
        masker.feed(line, out)
    return "\n".join(out)


_ENTRY_SEPARATOR = re.compile(r":(?=[ \t]|\r?$)")  # never the colon inside `[MASKED:kind]`
_BLOCK_SCALAR = re.compile(r"[|>][-+0-9]*(?:[ \t]+#.*)?")  # `|`, `|-`, `>+`, `|2`: the value is on the lines below
_PLACEHOLDER_VALUE = re.compile(r"([\"']?)\[MASKED:[\w-]+\]\1")


class _SecretData:
    """Line by line through a Secret manifest: each entry of a `data:`/`stringData:` block, with the lines of
    its value below it (a `|` or `>` block, a folded plain scalar), becomes `key: [MASKED:k8s-secret]`.

    An entry left as it is (an empty value, a block indicator, a placeholder) turns masked when a line of
    value follows; a value line of a masked entry goes. So the output has no value left to mask: a second
    pass finds nothing, where masking the first line of a `tls.key: |` block alone left the key's lines
    behind, and read the placeholder on them as a new entry.
    """

    def __init__(self, counts: Counter[str]) -> None:
        self.counts = counts
        self.block: int | None = None  # indent of the `data:` line while inside its block
        self.entry: int | None = None  # indent of the block's entries
        self.kept: int | None = None  # where in `out` the current entry stands, while its value may still follow
        self.masked = False  # the current entry is masked: the lines of its value go

    def feed(self, line: str, out: list[str]) -> None:
        stripped = line.strip()
        indent = len(line) - len(line.lstrip())
        if self.block is not None and stripped and indent > self.block and self.entry is not None and indent > self.entry:
            self._value_line(line, stripped, out)
            return
        header = _SECRET_DATA.fullmatch(line)
        if header:
            self.block, self.entry, self.kept, self.masked = len(header.group("indent")), None, None, False
        elif self.block is not None and stripped and indent <= self.block and not stripped.startswith("#"):
            self.block = None  # dedented past the block (a comment does not end a YAML block)
        elif self.block is not None and stripped and indent > self.block:
            self.entry = indent
            line = self._entry_line(line, stripped, len(out))
        out.append(line)

    def _entry_line(self, line: str, stripped: str, at: int) -> str:
        self.kept, self.masked = None, False
        if stripped.startswith("#"):
            return line
        separator = _ENTRY_SEPARATOR.search(line)
        value = line[separator.end() :].strip() if separator else ""
        if PLACEHOLDER.fullmatch(stripped) or (
            separator and (not value or _BLOCK_SCALAR.fullmatch(value) or _PLACEHOLDER_VALUE.fullmatch(value))
        ):
            self.kept = at
            return line
        self.masked = True
        self.counts["k8s-secret"] += 1
        return self._masked(line, separator)

    def _value_line(self, line: str, stripped: str, out: list[str]) -> None:
        """A line deeper than the entries: part of the current entry's value."""
        if self.masked:
            return
        if self.kept is not None:
            entry = out[self.kept]
            if not PLACEHOLDER.fullmatch(entry.strip()):
                out[self.kept] = self._masked(entry, _ENTRY_SEPARATOR.search(entry))
            self.kept, self.masked = None, True
            self.counts["k8s-secret"] += 1
        elif PLACEHOLDER.fullmatch(stripped):
            out.append(line)  # after a comment: a placeholder line stays what it is
        else:
            self.masked = True
            self.counts["k8s-secret"] += 1
            out.append(line[: len(line) - len(line.lstrip())] + "[MASKED:k8s-secret]" + ("\r" if line.endswith("\r") else ""))

    @staticmethod
    def _masked(line: str, separator: re.Match[str] | None) -> str:
        cr = "\r" if line.endswith("\r") else ""
        if separator is None:  # not `key: value`: the whole line is the value
            return line[: len(line) - len(line.lstrip())] + "[MASKED:k8s-secret]" + cr
        return f"{line[: separator.start()]}: [MASKED:k8s-secret]{cr}"


# ---------------------------------------------------------------------------------------------------------
# Logs.


class MaskingFilter(logging.Filter):
    """Masks every record it sees: the message with its arguments merged in, and a formatted traceback.

    Attach it to handlers (`handler.addFilter(MaskingFilter())`): a handler's filters see the records of
    every logger below it, a logger's filters only its own.
    """

    def filter(self, record: logging.LogRecord) -> bool:
        try:
            message = record.getMessage()
        except (TypeError, ValueError):  # arguments that do not fit the format: keep both, masked
            message = f"{record.msg} {record.args}"
        record.msg, record.args = mask_secrets(message).text, None
        if record.exc_info and not record.exc_text:
            record.exc_text = logging.Formatter().formatException(record.exc_info)
        if record.exc_text:
            record.exc_text = mask_secrets(record.exc_text).text
        if record.stack_info:
            record.stack_info = mask_secrets(record.stack_info).text
        return True


def mask_log_handlers(names: Sequence[str] = ("", "uvicorn", "uvicorn.error", "uvicorn.access")) -> None:
    """Attach a MaskingFilter to every handler of these loggers (once): what a process logs is masked."""
    for name in names:
        for handler in logging.getLogger(name).handlers:
            if not any(isinstance(f, MaskingFilter) for f in handler.filters):
                handler.addFilter(MaskingFilter())
