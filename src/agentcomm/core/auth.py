"""Token authentication: HS256 JWTs with the claims `sub`, `role` and `exp`.

With no AUTH_SECRET the hub is open (and says so loudly at start). With one, every WebSocket,
gRPC call and HTTP API call must present a valid token; an agent's token only speaks for the
agent named in its `sub`.

Exceptions:

    AuthError        a missing, malformed, expired or wrongly signed token, or none to mint
    ValueError
    └── WeakSecret   AUTH_SECRET is set but too short to sign with; nothing starts with it
"""

from __future__ import annotations

import math
import time
from dataclasses import dataclass
from enum import StrEnum

import jwt

ALGORITHM = "HS256"
# Tokens are small; anything longer is refused before it is parsed.
MAX_TOKEN_CHARS = 4096
# HS256 signs with SHA-256: a key shorter than its 32-byte output makes tokens easier to forge
# (RFC 7518 §3.2), and PyJWT only warns about it.
MIN_SECRET_BYTES = 32


class Role(StrEnum):
    FRONTEND = "frontend"
    AGENT = "agent"
    BROKER = "broker"
    ADMIN = "admin"


class AuthError(Exception):
    """A missing, malformed, expired or wrongly signed token; the text says which."""


class WeakSecret(ValueError):
    """AUTH_SECRET is shorter than MIN_SECRET_BYTES; the text says how to make a good one."""


@dataclass(frozen=True, slots=True)
class Principal:
    subject: str
    role: Role
    # When the token stops being valid (seconds since the epoch): sessions and streams opened
    # with it end then, unless given a fresh one.
    expires_at: float | None = None

    def may_act_as(self, role: Role, subject: str | None = None) -> bool:
        """Admins may act as anyone; others only in their role and, when named, as themselves."""
        if self.role is Role.ADMIN:
            return True
        return self.role is role and (subject is None or subject == self.subject)


class Authenticator:
    def __init__(self, secret: str) -> None:
        """Raises WeakSecret for a secret that is set but shorter than MIN_SECRET_BYTES."""
        size = len(secret.encode())
        if 0 < size < MIN_SECRET_BYTES:
            raise WeakSecret(
                f"AUTH_SECRET is {size} bytes long; it must have at least {MIN_SECRET_BYTES}: "
                "make one with python3 -c 'import secrets; print(secrets.token_urlsafe(32))'"
            )
        self._secret = secret

    @property
    def enabled(self) -> bool:
        return bool(self._secret)

    def verify(self, token: str | None) -> Principal:
        """The principal a token names. Raises AuthError; only call when enabled."""
        if not token:
            raise AuthError("A token is required.")
        if len(token) > MAX_TOKEN_CHARS:
            raise AuthError("The token is too long.")
        try:
            claims = jwt.decode(
                token,
                self._secret,
                algorithms=[ALGORITHM],  # never "none", never another algorithm
                options={"require": ["exp", "sub", "role"]},
            )
        except jwt.ExpiredSignatureError:
            raise AuthError("The token has expired.") from None
        except jwt.InvalidTokenError as exc:
            raise AuthError(f"The token is not valid: {exc}.") from None
        subject, role = claims.get("sub"), claims.get("role")
        if not isinstance(subject, str) or not subject:
            raise AuthError("The token's sub claim must be a non-empty string.")
        expires = claims.get("exp")
        try:
            return Principal(
                subject,
                Role(str(role)),
                float(expires) if isinstance(expires, int | float) else None,
            )
        except ValueError:
            raise AuthError(
                "The token's role must be one of frontend, agent, broker, admin."
            ) from None

    def mint(self, role: Role, subject: str, ttl_seconds: float) -> str:
        """A token for `subject` in `role`, valid for `ttl_seconds` (> 0) from now."""
        if not self.enabled:
            raise AuthError("Cannot mint tokens: AUTH_SECRET is not set.")
        if not (ttl_seconds > 0 and math.isfinite(ttl_seconds)):
            raise AuthError(f"A token must live a number of seconds above 0; got {ttl_seconds}.")
        now = int(time.time())
        # Rounded up: a token asked for half a second must not be expired when it is made.
        expires = now + math.ceil(ttl_seconds)
        claims = {"sub": subject, "role": role.value, "iat": now, "exp": expires}
        return jwt.encode(claims, self._secret, algorithm=ALGORITHM)


def bearer_token(header_value: str | None) -> str | None:
    """The token of an `Authorization: Bearer …` value, or None."""
    if not header_value:
        return None
    scheme, _, token = header_value.strip().partition(" ")
    return token.strip() or None if scheme.lower() == "bearer" else None


def token_subject(token: str) -> str | None:
    """The `sub` a token names, read without verifying it: clients use it to pick the id their
    token speaks for. The server always verifies."""
    if not token:
        return None
    try:
        claims = jwt.decode(token, options={"verify_signature": False})
    except jwt.InvalidTokenError:
        return None
    subject = claims.get("sub")
    return subject if isinstance(subject, str) and subject else None
