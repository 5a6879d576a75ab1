"""Regressions of the masker (issue 14): Kubernetes Secrets with block values, inputs that took time
quadratic in their size, and texts whose masked form a second pass still found secrets in.

Run time is not asserted here (it belongs to `kb bench mask`); large adversarial inputs are checked for
what they must give: a masked text that masks to itself, with nothing left to find.
"""

from __future__ import annotations

import pytest

from assets.mask import PLACEHOLDER, MaskResult, find_secrets, mask_secrets
from kb.bench import MASK_SHAPES

PEM_HEADER = "-----BEGIN RSA PRIVATE KEY-----"
KEY_LINES = ["MIIEowIBAAKCAQEA7bq1" + "Q3dx" * 11, "x9Zk" * 16, "QUFBQUFB=="]


def _assert_stable(text: str) -> MaskResult:
    """Masked once, the text masks to itself and holds no finding."""
    once = mask_secrets(text)
    assert mask_secrets(once.text) == MaskResult(once.text, {})
    assert find_secrets(once.text) == []
    return once


def test_a_tls_secret_masks_each_block_whole_and_keeps_the_manifest() -> None:
    key = "\n".join(f"    {line}" for line in (PEM_HEADER, *KEY_LINES, "-----END RSA PRIVATE KEY-----"))
    manifest = (
        "apiVersion: v1\nkind: Secret\ntype: kubernetes.io/tls\nmetadata:\n  name: gateway-tls\n"
        f"data:\n  tls.crt: |\n    LS0tLS1CRUdJTiBDRVJU\n    QUFBQUFB\n  tls.key: |\n{key}\n"
        "stringData:\n  password: |-\n    hunter2hunter2\n\n    second line\n  user: admin\ntype2: kept\n"
    )
    masked = _assert_stable(manifest)
    assert masked.text == (
        "apiVersion: v1\nkind: Secret\ntype: kubernetes.io/tls\nmetadata:\n  name: gateway-tls\n"
        "data:\n  tls.crt: [MASKED:k8s-secret]\n  tls.key: [MASKED:k8s-secret]\n"
        "stringData:\n  password: [MASKED:k8s-secret]\n\n  user: [MASKED:k8s-secret]\ntype2: kept\n"
    )
    assert masked.counts == {"k8s-secret": 4}


def test_secret_data_lines_are_masked_whatever_their_shape() -> None:
    """A placeholder value stays, unless more of the value follows on the lines below it."""
    manifest = (
        "kind: Secret\nitems:\n  - data:  # base64\n      a: YWJj\n      # a comment stays\n      b:\n"
        "        folded plain value\n      c: [MASKED:credential]\n      not-a-pair\n      d: [MASKED:jwt]\n"
        "        continued\n"
    )
    masked = _assert_stable(manifest)
    assert masked.text == (
        "kind: Secret\nitems:\n  - data:  # base64\n      a: [MASKED:k8s-secret]\n      # a comment stays\n"
        "      b: [MASKED:k8s-secret]\n      c: [MASKED:credential]\n      [MASKED:k8s-secret]\n      d: [MASKED:k8s-secret]\n"
    )


def test_a_crlf_manifest_keeps_its_line_ends() -> None:
    masked = _assert_stable("kind: Secret\r\ndata:\r\n  tls.key: |\r\n    QUFB\r\nnext: 1\r\n")
    assert masked.text == "kind: Secret\r\ndata:\r\n  tls.key: [MASKED:k8s-secret]\r\nnext: 1\r\n"


def test_a_word_before_a_masked_email_stays_prose_on_every_pass() -> None:
    masked = _assert_stable("Password: hunter ivan.petrov@yandex.ru")
    assert masked.text == "Password: hunter [MASKED:email]"


def test_a_secret_in_an_encoded_parameter_name_goes_with_the_name() -> None:
    masked = _assert_stable("GET /cb?ghp_%41" + "A" * 36 + "=x&page=2")
    assert masked.text == "GET /cb?[MASKED:github-token]&page=2"


def test_an_escaped_quote_in_json_opens_a_value() -> None:
    masked = _assert_stable('{"cmd": "password = \\"Zq8!wLm3Tx9\\""}')
    assert masked.text == '{"cmd": "password = \\"[MASKED:credential]\\""}'


def test_a_cut_off_key_goes_through_its_padded_last_line_and_spares_the_next_word() -> None:
    masked = _assert_stable(f"{PEM_HEADER}\n{KEY_LINES[0]}\n{KEY_LINES[2]}\nrefund\n")
    assert masked.text == "[MASKED:private-key]\nrefund\n"


def test_glued_tokens_are_all_masked() -> None:
    masked = _assert_stable("AIza" + "x" * 35 + "xoxb-123-456-abcdef and " + "(415) 555-2671" * 6)
    assert not any(part in masked.text for part in ("xoxb", "555"))


def test_headers_of_keys_with_no_key_are_prose_however_many() -> None:
    text = f"{PEM_HEADER}\n" * (200_000 // (len(PEM_HEADER) + 1))
    assert mask_secrets(text) == MaskResult(text, {})
    quoted = f'"{PEM_HEADER}\\n" +\n' * 6000  # a key named in a string in code, never ended
    assert mask_secrets(quoted) == MaskResult(quoted, {})


def test_a_long_cut_off_key_is_masked_whole() -> None:
    body = "\n".join("x9Zk" * 16 for _ in range(3000))  # 195 kB of key lines, no END line
    masked = _assert_stable(f"key:\n{PEM_HEADER}\n{body}\nrefund\n")
    assert masked.text == "key:\n[MASKED:private-key]\nrefund\n"


@pytest.mark.parametrize("shape", [s for s in MASK_SHAPES if s != "ordinary_text"])
def test_large_adversarial_inputs_are_masked_to_a_stable_text(shape: str) -> None:
    """The shapes of `kb bench mask` at 100 kB: each masks to a text with nothing left to find."""
    text = MASK_SHAPES[shape](100_000)
    masked = _assert_stable(text)
    assert masked.text != "[MASKED:unstable]"
    assert not PLACEHOLDER.fullmatch(masked.text)


def test_long_runs_a_key_name_and_spaces_still_find_the_key() -> None:
    """IBM's pattern split a run of spaces between ` *`, ` +` and ` *`: rewritten, it finds the same keys."""
    value = "A1b2C3d4E5f6G7h8I9j0K1l2M3n4O5p6Q7r8S9t0U1v2"
    masked = mask_secrets(f"ibm_cloud_api_key =    {value}\nibm_api_key{' ' * 5000}{value}\n")
    assert value not in masked.text and masked.counts == {"ibm-cloud-key": 2}


def test_no_plugin_pattern_keeps_the_split_of_spaces() -> None:
    """A detect-secrets upgrade that changes how its patterns read `key = value` must be looked at here."""
    from assets.mask import _ASSIGNMENT_GAP, PLUGINS

    rewritten = [p for p in PLUGINS if any(_ASSIGNMENT_GAP in r.pattern for r in p.detector.denylist)]
    assert len(rewritten) == 4  # IBM Cloud IAM, IBM COS HMAC, SoftLayer, Cloudant
    assert not any(_ASSIGNMENT_GAP in r.pattern for p in PLUGINS for r in p.patterns)


def test_a_credential_after_a_comma_is_masked_while_a_keyword_argument_passing_a_variable_is_not() -> None:
    # Found by the parse fuzzer: the keyword-argument exemption took any `, key=value` for code.
    for text in ("user=admin, password=S3cr3tPa55", "x, DB_PASSWORD=A00000000000009x"):
        masked = mask_secrets(text).text
        assert "S3cr3tPa55" not in masked and "A00000000000009x" not in masked and find_secrets(masked) == []
    for code in ("connect(host, passwd=PASSWORD)", "f(a, token=token)", "connect(user, password=db_pass2)"):
        assert mask_secrets(code).text == code
