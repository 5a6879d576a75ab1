"""Idempotency-key handling for payment creation (see ADR-0012)."""

import hashlib
import json

from redis import Redis

KEY_TTL_SECONDS = 24 * 3600


class IdempotencyKeyReused(Exception):
    """The same Idempotency-Key was sent with a different request body."""


def request_fingerprint(body: dict) -> str:
    """Stable hash of a request body: keys sorted so field order does not matter."""
    return hashlib.sha256(json.dumps(body, sort_keys=True).encode()).hexdigest()


def lookup_or_reserve(redis: Redis, key: str, body: dict) -> dict | None:
    """Return the stored response for a repeated key, or reserve the key and return None."""
    fingerprint = request_fingerprint(body)
    reserved = redis.set(f"idem:{key}", json.dumps({"fp": fingerprint}), nx=True, ex=KEY_TTL_SECONDS)
    if reserved:
        return None
    stored = json.loads(redis.get(f"idem:{key}"))
    if stored["fp"] != fingerprint:
        raise IdempotencyKeyReused(key)
    return stored.get("response")


def store_response(redis: Redis, key: str, body: dict, response: dict) -> None:
    """Save the final response so retries with the same key receive it."""
    payload = {"fp": request_fingerprint(body), "response": response}
    redis.set(f"idem:{key}", json.dumps(payload), ex=KEY_TTL_SECONDS)
