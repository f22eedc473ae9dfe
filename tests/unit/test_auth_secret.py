"""A secret too short to sign with, and a token over before it starts, are refused in one
sentence (core/auth.py)."""

from __future__ import annotations

import warnings

import pytest

from agentcomm.core.auth import MIN_SECRET_BYTES, Authenticator, AuthError, Role, WeakSecret


def test_a_short_secret_is_refused_with_how_to_make_one() -> None:
    with pytest.raises(WeakSecret) as refused:
        Authenticator("abc")
    assert str(refused.value).startswith("AUTH_SECRET is 3 bytes long; it must have at least 32")
    assert "secrets.token_urlsafe(32)" in str(refused.value)


def test_no_secret_is_an_open_hub_and_a_long_one_signs_without_warnings() -> None:
    assert not Authenticator("").enabled
    auth = Authenticator("x" * MIN_SECRET_BYTES)
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        token = auth.mint(Role.ADMIN, "ops", 0.5)
    assert auth.verify(token).subject == "ops"  # a half-second token is not born expired


@pytest.mark.parametrize("ttl", [0.0, -5.0, float("nan"), float("inf")])
def test_a_lifetime_that_is_not_above_zero_is_refused(ttl: float) -> None:
    with pytest.raises(AuthError, match="A token must live a number of seconds above 0"):
        Authenticator("x" * MIN_SECRET_BYTES).mint(Role.ADMIN, "ops", ttl)
