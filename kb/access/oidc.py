"""OIDC sign-in: bearer JWTs from the company's identity provider, checked against its published keys (JWKS)."""

from __future__ import annotations

import base64
import binascii
import json
import re
from collections.abc import Mapping, Sequence
from typing import Any

import jwt

from kb.access.identity import AuthError, Identity

# Only asymmetric algorithms: an HS* token "signed" with the provider's public key is the classic algorithm confusion.
ASYMMETRIC_ALGORITHMS = frozenset({"RS256", "RS384", "RS512", "PS256", "PS384", "PS512", "ES256", "ES384", "ES512", "EdDSA"})
MAX_TOKEN_CHARS = 16_384  # far above any real ID/access token; bounds the work a stranger's header can ask for
_COMPACT_JWS = re.compile(r"[A-Za-z0-9_-]+\.[A-Za-z0-9_-]+\.[A-Za-z0-9_-]*")
_GROUP_SEPARATORS = re.compile(r"[\s,]+")

# Most specific first: pyjwt's errors form a hierarchy (InvalidSignatureError is a DecodeError, all are InvalidTokenError).
_REFUSALS: tuple[tuple[type[jwt.PyJWTError], str], ...] = (
    (jwt.ExpiredSignatureError, "the token has expired"),
    (jwt.ImmatureSignatureError, "the token is not valid yet"),
    (jwt.InvalidIssuedAtError, "the token's issue time (iat) is not valid"),
    (jwt.InvalidIssuerError, "the token was issued by an issuer this server does not accept"),
    (jwt.InvalidAudienceError, "the token is meant for another audience"),
    (jwt.InvalidAlgorithmError, "the token's signing algorithm is not accepted"),
    (jwt.InvalidSignatureError, "the token's signature is not valid"),
    (jwt.DecodeError, "the token is malformed"),
    (jwt.InvalidKeyError, "the identity provider's key cannot verify this token"),
    (jwt.InvalidTokenError, "the token is not valid"),
)


class OIDCVerifier:
    """Verifies bearer JWTs: signature by a key from the issuer's JWKS, `iss`, `aud`, `exp` (required), `nbf`/`iat`."""

    def __init__(
        self,
        issuer: str,
        audience: str,
        jwks_url: str,
        groups_claim: str = "groups",
        username_claim: str = "preferred_username",
        algorithms: Sequence[str] = ("RS256", "ES256"),
        leeway_s: float = 30,
        timeout_s: float = 5,
        jwks_refresh_cooldown_s: float = 30,
    ) -> None:
        refused = [a for a in algorithms if a not in ASYMMETRIC_ALGORITHMS]
        if refused or not algorithms:
            raise ValueError(f"OIDC algorithms must be asymmetric ones of {sorted(ASYMMETRIC_ALGORITHMS)}; refused: {refused}")
        self.issuer = issuer
        self.audience = audience
        self.groups_claim = groups_claim
        self.username_claim = username_claim
        self.algorithms = tuple(algorithms)
        self.leeway_s = leeway_s
        # The JWK set is cached (5 min); a token with an unknown `kid` refetches it once, at most once per cooldown,
        # so a rotated key works at once while a flood of forged kids cannot hammer the identity provider.
        self._jwks = jwt.PyJWKClient(
            jwks_url, cache_jwk_set=True, lifespan=300, timeout=timeout_s, cooldown_duration=jwks_refresh_cooldown_s
        )

    def verify(self, token: str) -> Identity:
        """The identity a valid token carries; AuthError (safe to show, never echoing the token) otherwise."""
        if len(token) > MAX_TOKEN_CHARS or not _COMPACT_JWS.fullmatch(token):
            raise AuthError("the token is malformed")
        header = _header(token)
        if header is None:
            raise AuthError("the token is malformed")
        if header.get("alg") not in self.algorithms:
            raise AuthError(f"the token's signing algorithm is not accepted (allowed: {', '.join(self.algorithms)})")
        claims = self._decode(token, self._signing_key(header))
        return Identity(user=self._user(claims), method="oidc", groups=self._groups(claims))

    @staticmethod
    def looks_like_jwt(token: str) -> bool:
        """Whether `token` has the shape of a JWT (three base64url parts, a JSON header with `alg`), not one of our keys."""
        return len(token) <= MAX_TOKEN_CHARS and bool(_COMPACT_JWS.fullmatch(token)) and _header(token) is not None

    def _signing_key(self, header: Mapping[str, Any]) -> jwt.PyJWK:
        kid = header.get("kid")
        if not isinstance(kid, str) or not kid:
            raise AuthError("the token names no signing key (kid)")
        try:
            return self._jwks.get_signing_key(kid)
        except jwt.PyJWKClientConnectionError as exc:
            raise AuthError("the identity provider could not be reached to fetch its signing keys (JWKS)") from exc
        except jwt.PyJWKClientError as exc:
            # Raised both for an unknown kid and for a JWKS document without signing keys.
            raise AuthError("the token is signed by a key the identity provider does not publish") from exc
        except jwt.PyJWTError as exc:
            raise AuthError("the identity provider's signing keys (JWKS) could not be read") from exc

    def _decode(self, token: str, key: jwt.PyJWK) -> dict[str, Any]:
        options: dict[str, Any] = {"require": ["exp", "iss", "aud"], "verify_signature": True}
        try:
            claims: dict[str, Any] = jwt.decode(
                token,
                key,
                algorithms=list(self.algorithms),
                audience=self.audience,
                issuer=self.issuer,
                leeway=self.leeway_s,
                options=options,  # type: ignore[arg-type]
            )
        except jwt.MissingRequiredClaimError as exc:
            raise AuthError(f"the token lacks the required claim {exc.claim!r}") from exc
        except jwt.PyJWTError as exc:
            raise AuthError(_refusal(exc)) from exc
        return claims

    def _user(self, claims: Mapping[str, Any]) -> str:
        for claim in (self.username_claim, "sub"):
            value = claims.get(claim)
            if isinstance(value, str) and value.strip():
                return value.strip()
        raise AuthError(f"the token names no user (neither {self.username_claim!r} nor 'sub')")

    def _groups(self, claims: Mapping[str, Any]) -> tuple[str, ...]:
        value = claims.get(self.groups_claim)
        if value is None:
            return ()
        if isinstance(value, str):
            return tuple(g for g in _GROUP_SEPARATORS.split(value) if g)
        if isinstance(value, list) and all(isinstance(g, str) for g in value):
            return tuple(g for g in value if g)
        raise AuthError(f"the token's {self.groups_claim!r} claim is neither a list of strings nor a string")


def _header(token: str) -> dict[str, Any] | None:
    """The decoded JOSE header when it is a JSON object with an `alg`; None otherwise."""
    encoded = token.split(".", 1)[0]
    try:
        header = json.loads(base64.urlsafe_b64decode(encoded + "=" * (-len(encoded) % 4)))
    except (binascii.Error, ValueError):
        return None
    return header if isinstance(header, dict) and isinstance(header.get("alg"), str) else None


def _refusal(exc: jwt.PyJWTError) -> str:
    return next((message for kind, message in _REFUSALS if isinstance(exc, kind)), "the token is not valid")
