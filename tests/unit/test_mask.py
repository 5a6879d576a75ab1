from assets.mask import find_secrets, mask_secrets


def test_credentials_tokens_and_keys_are_masked() -> None:
    text = (
        "DB_PASSWORD=hunter22 url=postgres://app:Pa55w0rd@db:5432/x Authorization: Bearer abcdefghijklmnop1234567 "
        "key AKIAIOSFODNN7EXAMPLE gh ghp_abcdefghijklmnopqrstuvwxyz0123456789 пароль: qwerty123"
    )
    masked = mask_secrets(text)
    for secret in ("hunter22", "Pa55w0rd", "abcdefghijklmnop1234567", "AKIAIOSFODNN7EXAMPLE", "ghp_abcdef", "qwerty123"):
        assert secret not in masked.text
    assert masked.counts == {"credential": 2, "url-password": 1, "bearer-token": 1, "aws-access-key": 1, "github-token": 1}


def test_card_numbers_need_a_valid_luhn_checksum() -> None:
    masked = mask_secrets("card 4111 1111 1111 1111, order 4111111111111112")
    assert "4111 1111 1111 1111" not in masked.text
    assert "4111111111111112" in masked.text  # fails Luhn: an order number, not a card


def test_ssn_and_phone_numbers_are_masked() -> None:
    masked = mask_secrets("ssn 123-45-6789, call +7 (495) 123-45-67 or (415) 555-2671")
    assert masked.counts == {"ssn": 1, "phone": 2}


def test_kubernetes_secret_data_is_masked_whatever_the_keys() -> None:
    manifest = "apiVersion: v1\nkind: Secret\nmetadata:\n  name: db\ndata:\n  username: YWRtaW4=\n  tls.crt: LS0t\ntype: Opaque\n"
    masked = mask_secrets(manifest)
    assert "YWRtaW4=" not in masked.text and "LS0t" not in masked.text
    assert "name: db" in masked.text and "type: Opaque" in masked.text


def test_masking_is_idempotent_and_masked_text_has_no_findings() -> None:
    once = mask_secrets("password=hunter22 postgres://u:p4ss@h/db").text
    assert mask_secrets(once).text == once
    assert find_secrets(once) == []


def test_type_annotations_and_references_are_not_secrets() -> None:
    text = "def sign(secret: str, token: Optional[str]) -> None: ...\npassword: ${DB_PASSWORD}\nversion 1.2.3 on 2024-01-15"
    assert mask_secrets(text).counts == {}
