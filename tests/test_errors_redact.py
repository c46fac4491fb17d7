"""Secrets never reach a message: every LoftError redacts URL passwords and secret
parameters, and so do the CLI, the logs and the `loft up` banner (tests of those in
tests/cli/test_secrets_redacted.py)."""

from __future__ import annotations

import pytest

from loft.errors import LoftError, redact

SECRET = "s3cr3t-Pa55"


@pytest.mark.parametrize(
    "text",
    [
        f"postgresql://loft:{SECRET}@db.internal:5432/loft",
        f"postgresql+psycopg://loft:{SECRET}@10.0.0.5/loft?sslmode=require",
        f"cannot open catalog 'postgres://u:{SECRET}@h/x': refused",
        f"postgresql://db/loft?user=loft&password={SECRET}&sslmode=require",
        f"postgresql://db/loft?PASSWORD={SECRET}",
        f"s3://bucket/p?endpoint=http://AKIA:{SECRET}@127.0.0.1:8333",
        f'Could not connect to the endpoint URL: "http://ak:{SECRET}@127.0.0.1:1/b?list-type=2"',
        f"https://cache.example/nar/x?X-Amz-Signature={SECRET}&X-Amz-Expires=60",
        f"first postgresql://a:{SECRET}@h/x then http://b:{SECRET}@h2/",
    ],
)
def test_redact_removes_passwords_and_secret_parameters(text: str) -> None:
    shown = redact(text)
    assert SECRET not in shown and "***" in shown
    err = LoftError(text, hint=text)
    assert SECRET not in err.message and SECRET not in (err.hint or "") and SECRET not in str(err)


@pytest.mark.parametrize(
    "text",
    [
        "postgresql://loft@db/loft",
        "file:///var/lib/loft/chunks",
        "s3://bucket/prefix?endpoint=http://127.0.0.1:8333&region=us-east-1",
        "range 0+4096 is outside volume 'v'",
        "user@host: a=b",
    ],
)
def test_redact_leaves_what_holds_no_secret(text: str) -> None:
    assert redact(text) == text
