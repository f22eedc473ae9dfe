"""Shared helpers for tests: small clients that speak only the documented protocol."""
