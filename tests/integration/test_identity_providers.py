"""The external sign-in methods against real servers on loopback: a JWKS over HTTP for OIDC, a real slapd for LDAP."""

from __future__ import annotations

import json
import tempfile
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

import jwt
import pytest
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec, rsa
from jwt.algorithms import ECAlgorithm, RSAAlgorithm

from kb.access.identity import AuthError, Identity
from kb.access.ldap import LDAPAuthenticator
from kb.access.oidc import OIDCVerifier
from kb.platform import free_port
from tests.slapd import GROUPS_BASE, USER_DN_TEMPLATE, USERS, Slapd, slapd, start_slapd  # noqa: F401

ISSUER = "https://idp.example.org/realms/payments"
AUDIENCE = "kb-api"


# ---------------------------------------------------------------- OIDC: a JWKS served over real HTTP


@dataclass
class SigningKey:
    kid: str
    private: Any
    algorithm: str

    def jwk(self) -> dict[str, Any]:
        codec = RSAAlgorithm if self.algorithm.startswith("RS") else ECAlgorithm
        return {**codec.to_jwk(self.private.public_key(), as_dict=True), "kid": self.kid, "use": "sig", "alg": self.algorithm}

    def sign(self, claims: dict[str, Any], **header: Any) -> str:
        return jwt.encode(claims, self.private, algorithm=self.algorithm, headers={"kid": self.kid, **header})


@dataclass
class JWKSServer:
    """The identity provider's JWKS endpoint: `keys` is what it publishes now; `fetches` counts GETs."""

    keys: list[SigningKey] = field(default_factory=list)
    fetches: int = 0
    httpd: ThreadingHTTPServer | None = None

    @property
    def url(self) -> str:
        assert self.httpd is not None
        return f"http://127.0.0.1:{self.httpd.server_address[1]}/protocol/openid-connect/certs"


def _serve_jwks(server: JWKSServer) -> ThreadingHTTPServer:
    class Handler(BaseHTTPRequestHandler):
        def do_GET(self) -> None:  # noqa: N802 (http.server's name)
            server.fetches += 1
            body = json.dumps({"keys": [k.jwk() for k in server.keys]}).encode()
            self.send_response(200)
            self.send_header("Content-Type", "application/json")
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            self.wfile.write(body)

        def log_message(self, *args: Any) -> None:
            pass

    httpd = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    threading.Thread(target=httpd.serve_forever, kwargs={"poll_interval": 0.05}, daemon=True).start()
    return httpd


@pytest.fixture(scope="module")
def rsa_key() -> SigningKey:
    return SigningKey("rsa-1", rsa.generate_private_key(public_exponent=65537, key_size=2048), "RS256")


@pytest.fixture(scope="module")
def ec_key() -> SigningKey:
    return SigningKey("ec-1", ec.generate_private_key(ec.SECP256R1()), "ES256")


@pytest.fixture
def jwks(rsa_key: SigningKey, ec_key: SigningKey) -> Iterator[JWKSServer]:
    server = JWKSServer(keys=[rsa_key, ec_key])
    server.httpd = _serve_jwks(server)
    yield server
    server.httpd.shutdown()
    server.httpd.server_close()


@pytest.fixture
def verifier(jwks: JWKSServer) -> OIDCVerifier:
    return OIDCVerifier(issuer=ISSUER, audience=AUDIENCE, jwks_url=jwks.url)


def claims(**overrides: Any) -> dict[str, Any]:
    now = int(time.time())
    base = {"iss": ISSUER, "aud": AUDIENCE, "sub": "f1c2-77", "preferred_username": "alice", "iat": now, "exp": now + 300}
    base["groups"] = ["kb-devops", "kb-viewers"]
    return {k: v for k, v in {**base, **overrides}.items() if v is not None}


def refusal(verifier: OIDCVerifier, token: str) -> str:
    """The AuthError message for a token that must be refused; it never contains the token."""
    with pytest.raises(AuthError) as caught:
        verifier.verify(token)
    assert not token or token not in str(caught.value)
    return str(caught.value)


def test_valid_rs256_token_gives_user_and_groups(verifier: OIDCVerifier, rsa_key: SigningKey) -> None:
    identity = verifier.verify(rsa_key.sign(claims()))
    assert identity == Identity(user="alice", method="oidc", groups=("kb-devops", "kb-viewers"))


def test_valid_es256_token_is_accepted(verifier: OIDCVerifier, ec_key: SigningKey) -> None:
    assert verifier.verify(ec_key.sign(claims(preferred_username="bob"))).user == "bob"


def test_user_falls_back_to_sub_and_missing_groups_are_empty(verifier: OIDCVerifier, rsa_key: SigningKey) -> None:
    identity = verifier.verify(rsa_key.sign(claims(preferred_username=None, groups=None)))
    assert (identity.user, identity.groups) == ("f1c2-77", ())


def test_groups_as_space_or_comma_separated_string(verifier: OIDCVerifier, rsa_key: SigningKey) -> None:
    assert verifier.verify(rsa_key.sign(claims(groups="kb-devops kb-viewers,kb-sre"))).groups == (
        "kb-devops",
        "kb-viewers",
        "kb-sre",
    )


def test_configured_claim_names_are_used(jwks: JWKSServer, rsa_key: SigningKey) -> None:
    custom = OIDCVerifier(ISSUER, AUDIENCE, jwks.url, groups_claim="roles", username_claim="email")
    identity = custom.verify(rsa_key.sign(claims(email="alice@example.org", roles=["kb-admins"])))
    assert (identity.user, identity.groups) == ("alice@example.org", ("kb-admins",))


def test_malformed_groups_claim_is_refused(verifier: OIDCVerifier, rsa_key: SigningKey) -> None:
    assert "groups" in refusal(verifier, rsa_key.sign(claims(groups=[1, 2])))


def test_expired_token_is_refused(verifier: OIDCVerifier, rsa_key: SigningKey) -> None:
    now = int(time.time())
    assert "expired" in refusal(verifier, rsa_key.sign(claims(iat=now - 3600, exp=now - 600)))


def test_token_within_leeway_after_expiry_is_accepted(verifier: OIDCVerifier, rsa_key: SigningKey) -> None:
    assert verifier.verify(rsa_key.sign(claims(exp=int(time.time()) - 5))).user == "alice"


def test_token_without_exp_is_refused(verifier: OIDCVerifier, rsa_key: SigningKey) -> None:
    assert "'exp'" in refusal(verifier, rsa_key.sign(claims(exp=None)))


def test_token_not_yet_valid_is_refused(verifier: OIDCVerifier, rsa_key: SigningKey) -> None:
    assert "not valid yet" in refusal(verifier, rsa_key.sign(claims(nbf=int(time.time()) + 3600)))


def test_token_issued_in_the_future_is_refused(verifier: OIDCVerifier, rsa_key: SigningKey) -> None:
    now = int(time.time())
    assert "not valid" in refusal(verifier, rsa_key.sign(claims(iat=now + 3600, exp=now + 7200)))


def test_wrong_issuer_is_refused(verifier: OIDCVerifier, rsa_key: SigningKey) -> None:
    assert "issuer" in refusal(verifier, rsa_key.sign(claims(iss="https://evil.example.org")))


def test_wrong_audience_is_refused(verifier: OIDCVerifier, rsa_key: SigningKey) -> None:
    assert "audience" in refusal(verifier, rsa_key.sign(claims(aud="another-app")))


def test_token_signed_by_another_key_under_a_known_kid_is_refused(verifier: OIDCVerifier) -> None:
    impostor = SigningKey("rsa-1", rsa.generate_private_key(public_exponent=65537, key_size=2048), "RS256")
    assert "signature" in refusal(verifier, impostor.sign(claims()))


def test_tampered_payload_is_refused(verifier: OIDCVerifier, rsa_key: SigningKey) -> None:
    header, _, signature = rsa_key.sign(claims()).split(".")
    forged_payload = jwt.utils.base64url_encode(json.dumps(claims(groups=["kb-admins"])).encode()).decode()
    assert "signature" in refusal(verifier, f"{header}.{forged_payload}.{signature}")


def test_alg_none_token_is_refused(verifier: OIDCVerifier) -> None:
    token = jwt.encode(claims(), None, algorithm="none", headers={"kid": "rsa-1"})
    assert "algorithm" in refusal(verifier, token)


def test_hs256_token_keyed_with_the_public_key_is_refused(verifier: OIDCVerifier, rsa_key: SigningKey) -> None:
    """Algorithm confusion: the attacker knows the public key and "signs" an HS256 token with it."""
    public_pem = rsa_key.private.public_key().public_bytes(
        serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo
    )
    signing_input = b".".join(
        jwt.utils.base64url_encode(json.dumps(part).encode())
        for part in ({"alg": "HS256", "typ": "JWT", "kid": "rsa-1"}, claims())
    )
    signature = jwt.utils.base64url_encode(jwt.algorithms.HMACAlgorithm(jwt.algorithms.HMACAlgorithm.SHA256).sign(
        signing_input, public_pem
    ))  # fmt: skip
    assert "algorithm" in refusal(verifier, (signing_input + b"." + signature).decode())


def test_rs256_header_on_an_ec_key_is_refused(verifier: OIDCVerifier, ec_key: SigningKey) -> None:
    token = ec_key.sign(claims())
    header, rest = token.split(".", 1)
    swapped = jwt.utils.base64url_encode(json.dumps({"alg": "RS256", "typ": "JWT", "kid": "ec-1"}).encode()).decode()
    assert "algorithm" in refusal(verifier, f"{swapped}.{rest}")


def test_verifier_refuses_symmetric_or_none_algorithms() -> None:
    for algorithms in (("HS256",), ("RS256", "none"), ()):
        with pytest.raises(ValueError):
            OIDCVerifier(ISSUER, AUDIENCE, "http://127.0.0.1:1/jwks", algorithms=algorithms)


@pytest.mark.parametrize("token", ["", "abc", "a.b.c", "a.b", "kb_0123456789abcdef", "x" * 20_000, "eyJhbGciOiJSUzI1NiJ9.e30"])
def test_malformed_token_is_refused(verifier: OIDCVerifier, token: str) -> None:
    assert "malformed" in refusal(verifier, token)


def test_token_without_kid_is_refused(verifier: OIDCVerifier, rsa_key: SigningKey) -> None:
    token = jwt.encode(claims(), rsa_key.private, algorithm="RS256")
    assert "kid" in refusal(verifier, token)


def test_token_signed_by_a_key_not_in_the_jwks_is_refused(verifier: OIDCVerifier) -> None:
    stranger = SigningKey("stranger", ec.generate_private_key(ec.SECP256R1()), "ES256")
    assert "does not publish" in refusal(verifier, stranger.sign(claims()))


def test_rotated_key_published_after_the_first_fetch_is_accepted(jwks: JWKSServer, rsa_key: SigningKey) -> None:
    verifier = OIDCVerifier(ISSUER, AUDIENCE, jwks.url, jwks_refresh_cooldown_s=0)
    assert verifier.verify(rsa_key.sign(claims())).user == "alice"
    assert verifier.verify(rsa_key.sign(claims(preferred_username="bob"))).user == "bob"
    assert jwks.fetches == 1  # the key set is cached

    rotated = SigningKey("rsa-2", rsa.generate_private_key(public_exponent=65537, key_size=2048), "RS256")
    jwks.keys.append(rotated)
    assert verifier.verify(rotated.sign(claims(preferred_username="carol"))).user == "carol"
    assert jwks.fetches == 2  # the unknown kid refetched the set once


def test_unknown_kids_refetch_at_most_once_per_cooldown(verifier: OIDCVerifier, jwks: JWKSServer, rsa_key: SigningKey) -> None:
    verifier.verify(rsa_key.sign(claims()))
    for n in range(5):
        forged = SigningKey(f"forged-{n}", ec.generate_private_key(ec.SECP256R1()), "ES256")
        refusal(verifier, forged.sign(claims()))
    assert jwks.fetches == 1  # the first fetch started the cooldown: forged kids do not hammer the provider


def test_unreachable_jwks_is_an_auth_error(rsa_key: SigningKey) -> None:
    verifier = OIDCVerifier(ISSUER, AUDIENCE, f"http://127.0.0.1:{free_port()}/certs", timeout_s=2)
    assert "identity provider could not be reached" in refusal(verifier, rsa_key.sign(claims()))


def test_jwks_stopped_after_start_is_an_auth_error(jwks: JWKSServer, verifier: OIDCVerifier, rsa_key: SigningKey) -> None:
    assert jwks.httpd is not None
    jwks.httpd.shutdown()
    jwks.httpd.server_close()
    assert "identity provider could not be reached" in refusal(verifier, rsa_key.sign(claims()))


def test_looks_like_jwt_tells_tokens_from_api_keys(rsa_key: SigningKey) -> None:
    assert OIDCVerifier.looks_like_jwt(rsa_key.sign(claims()))
    assert OIDCVerifier.looks_like_jwt(jwt.encode(claims(), None, algorithm="none"))  # shaped like one: verify refuses it
    for other in ("kb_3f9a0c1d2e4b5a6978", "kb_a.b.c", "abc.def.ghi", "", "a..b", "eyJhbGciOiJSUzI1NiJ9.e30"):
        assert not OIDCVerifier.looks_like_jwt(other), other


# ---------------------------------------------------------------- LDAP: a real slapd


@pytest.fixture
def directory(slapd: Slapd) -> LDAPAuthenticator:  # noqa: F811 (the fixture imported above)
    return LDAPAuthenticator(url=slapd.url, user_dn_template=USER_DN_TEMPLATE, group_base=GROUPS_BASE)


def ldap_refusal(directory: LDAPAuthenticator, username: str, password: str) -> str:
    with pytest.raises(AuthError) as caught:
        directory.authenticate(username, password)
    assert not password or password not in str(caught.value)
    return str(caught.value)


def test_valid_ldap_user_gets_its_groups(directory: LDAPAuthenticator) -> None:
    assert directory.authenticate("alice", USERS["alice"]) == Identity(
        user="alice", method="ldap", groups=("kb-devops", "kb-viewers")
    )
    assert directory.authenticate("bob", USERS["bob"]).groups == ("kb-viewers",)


def test_ldap_user_in_no_group_has_no_groups(directory: LDAPAuthenticator) -> None:
    assert directory.authenticate("carol", USERS["carol"]).groups == ()


def test_ldap_username_is_reported_as_the_directory_spells_it(directory: LDAPAuthenticator) -> None:
    assert directory.authenticate("ALICE", USERS["alice"]).user == "alice"


def test_wrong_ldap_password_is_refused(directory: LDAPAuthenticator) -> None:
    assert ldap_refusal(directory, "alice", USERS["bob"]) == "invalid username or password"


def test_empty_ldap_password_is_refused(directory: LDAPAuthenticator) -> None:
    """An empty password is an "unauthenticated bind" that LDAP servers answer with success."""
    assert "password is required" in ldap_refusal(directory, "alice", "")


def test_unknown_ldap_user_is_refused_like_a_wrong_password(directory: LDAPAuthenticator) -> None:
    assert ldap_refusal(directory, "mallory", "anything-at-all") == "invalid username or password"


@pytest.mark.parametrize(
    "username", ["*)(uid=*", "*", "alice)(|(uid=*", "alice,ou=people", "uid=alice", "alice\x00", " alice", ""]
)
def test_ldap_username_with_dn_or_filter_characters_is_refused(directory: LDAPAuthenticator, username: str) -> None:
    assert "invalid username" in ldap_refusal(directory, username, USERS["alice"])


def test_stopped_ldap_server_is_an_auth_error() -> None:
    with tempfile.TemporaryDirectory(prefix="kb-slapd-") as root, start_slapd(Path(root)) as server:
        directory = LDAPAuthenticator(server.url, USER_DN_TEMPLATE, GROUPS_BASE, timeout_s=2)
        assert directory.authenticate("bob", USERS["bob"]).user == "bob"
        server.stop()
        assert "could not be reached" in ldap_refusal(directory, "bob", USERS["bob"])
