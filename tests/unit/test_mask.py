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


def test_azure_connection_string_keeps_names_and_loses_the_key() -> None:
    key = "q" * 40 + "Zx9+/" * 9 + "=="  # 87 characters, any length: the outside test's key was not the canonical 88 characters
    text = f"DefaultEndpointsProtocol=https;AccountName=payfiles;AccountKey={key};EndpointSuffix=core.windows.net"
    masked = mask_secrets(text)
    assert masked.text == (
        "DefaultEndpointsProtocol=https;AccountName=payfiles;AccountKey=[MASKED:azure-storage-key];EndpointSuffix=core.windows.net"
    )


def test_detect_secrets_plugins_find_tokens_our_rules_do_not_know() -> None:
    twilio = "SK" + "0123456789abcdef" * 2
    telegram = "7012345678:" + "AAH" + "x1Y2z3" * 5 + "Qw"
    masked = mask_secrets(f"twilio {twilio} and bot {telegram}")
    assert masked.counts == {"twilio-key": 1, "telegram-token": 1} and twilio not in masked.text


def test_keyword_plugin_masks_quoted_values_with_spaces_and_keeps_the_key() -> None:
    masked = mask_secrets('db_password = "correct horse battery staple"\nsecretName = "ledger-db"')
    assert masked.text == 'db_password = "[MASKED:credential]"\nsecretName = "ledger-db"'


def test_checksums_decide_between_personal_data_and_order_numbers() -> None:
    valid = "ИНН 7707083893 ИНН 500100732259 СНИЛС 112-233-445 95 ID 11010519491231002X IBAN GB82WEST12345698765432"
    invalid = "ИНН 7707083894 ИНН 500100732258 СНИЛС 112-233-445 96 ID 110105194912310021 IBAN GB82WEST12345698765433"
    assert mask_secrets(valid).counts == {"inn": 2, "snils": 1, "cn-resident-id": 1, "iban": 1}
    assert mask_secrets(invalid).counts == {}


def test_locale_phone_numbers_and_passports_are_masked() -> None:
    text = "тел. 8 (495) 123-45-67, +7 916 123 45 67, 手机13912345678, +86 139-1234-5678, паспорт серия 45 06 номер 123456"
    masked = mask_secrets(text)
    assert masked.counts == {"phone": 4, "ru-passport": 1} and "123456" not in masked.text and "серия" in masked.text


def test_tokens_right_after_chinese_text_are_found() -> None:
    token = "gh" + "p_" + "A1b2C3d4" * 4 + "E5f6"
    masked = mask_secrets(f"测试令牌{token}，邮箱zhang.wei@qq.com，密码：Xk29fLq7")
    assert masked.text == "测试令牌[MASKED:github-token]，邮箱[MASKED:email]，密码：[MASKED:credential]"


def test_percent_encoded_query_values_are_decoded_before_masking() -> None:
    masked = mask_secrets("GET /cb?phone=%2B7%20916%20123-45-67&pwd=p%40ss%26word1&page=2")
    assert masked.text == "GET /cb?phone=[MASKED:phone]&pwd=[MASKED:credential]&page=2"


def test_a_private_key_cut_off_by_a_chunk_is_masked_to_its_last_line() -> None:
    body = "MIIEowIBAAKCAQEA7bq1" + "x" * 44 + "\n" + "Q3d" * 21 + "\n"
    masked = mask_secrets(f"-----BEGIN RSA PRIVATE KEY-----\n{body}")
    assert (
        masked.text == "[MASKED:private-key]\n" and mask_secrets('must begin with "-----BEGIN RSA PRIVATE KEY-----"').counts == {}
    )


def test_code_that_passes_a_secret_along_is_not_a_secret() -> None:
    code = (
        "conn = connect(user=USR, passwd=PASSWORD, port=PORT)\nreturn {'token': token, 'token_type': 'bearer'}\n"
        "def _unquote(token: Token) -> str: ...\npassword = getpass.getpass('Password: ')\n"
    )
    assert mask_secrets(code).counts == {}


def test_emails_of_people_are_masked_role_and_documentation_addresses_kept() -> None:
    text = "ivan.petrov@yandex.ru, payments-oncall@bank.ru, noreply@bank.ru, jane@example.com, git@github.com:org/repo"
    assert mask_secrets(text).text == (
        "[MASKED:email], payments-oncall@bank.ru, noreply@bank.ru, jane@example.com, git@github.com:org/repo"
    )


def test_logging_filter_masks_message_arguments_and_traceback() -> None:
    import logging

    from assets.mask import MaskingFilter

    records: list[logging.LogRecord] = []

    class Keep(logging.Handler):
        def emit(self, record: logging.LogRecord) -> None:
            records.append(record)

    handler = Keep()
    handler.addFilter(MaskingFilter())
    logger = logging.getLogger("test.masking.filter")
    logger.addHandler(handler)
    logger.propagate = False
    try:
        logger.warning("connect to %s failed for %s", "postgres://app:Pa55w0rd@db/x", {"password": "hunter22"})
        try:
            raise RuntimeError("token=ghs_" + "a" * 36)
        except RuntimeError:
            logger.exception("call failed")
    finally:
        logger.removeHandler(handler)

    first, second = records
    assert (
        first.getMessage()
        == "connect to postgres://app:[MASKED:url-password]@db/x failed for {'password': '[MASKED:credential]'}"
    )
    assert "ghs_" not in (second.exc_text or "") and "RuntimeError: token=[MASKED:" in (second.exc_text or "")
    assert "ghs_" not in logging.Formatter().format(second)
