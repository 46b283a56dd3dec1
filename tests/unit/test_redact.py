"""Log redaction: known secret values and secret-named keys are masked in every record."""

from __future__ import annotations

import io
import logging
import time
from collections.abc import Iterator

import pytest
from pydantic import SecretStr

from stream import redact
from stream.redact import Redactor
from watchnext.settings import Settings

SECRET = "S3ntinel-unit-4f2a"


@pytest.fixture
def buffer() -> Iterator[io.StringIO]:
    out = io.StringIO()
    handler = logging.StreamHandler(out)
    root = logging.getLogger()
    level = root.level
    root.addHandler(handler)
    root.setLevel(logging.DEBUG)
    try:
        yield out
    finally:
        redact.uninstall()
        root.removeHandler(handler)
        root.setLevel(level)


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("{'sasl_plain_password': 'x1', 'a': 1}", "{'sasl_plain_password': '***', 'a': 1}"),
        ('{"ssl_password": "q\\"w", "a": 2}', '{"ssl_password": "***", "a": 2}'),
        ("sasl_plain_password=abc, user=u", "sasl_plain_password=***, user=u"),
        ("client_secret=b'xyz' ok", "client_secret=b'***' ok"),
        ("Password = 'x y'", "Password = '***'"),
        ("{'sasl_plain_password': None}", "{'sasl_plain_password': None}"),
        (
            "Sending username and password in the clear",
            "Sending username and password in the clear",
        ),
        ("search_tokens=50 user=u", "search_tokens=50 user=u"),
    ],
)
def test_secret_named_keys_are_masked(text: str, expected: str) -> None:
    assert Redactor().redact(text) == expected


def test_known_values_are_masked_in_any_form() -> None:
    quoted = "pa'ss\\word"
    r = Redactor([SECRET, quoted, ""])
    assert r.redact(f"got {SECRET}!") == "got ***!"
    assert quoted not in r.redact(repr({"k": quoted}))
    assert "pa'ss\\\\word" not in r.redact(repr({"k": quoted}))
    assert r.redact("nothing here") == "nothing here"  # the empty secret matches nothing


def test_long_lines_are_scanned_in_linear_time() -> None:
    r = Redactor([SECRET])
    for line in ("passwordx" * 20_000, "password='" * 30_000, "a" * 300_000 + "=", "x:" * 100_000):
        started = time.perf_counter()
        r.redact(line)
        assert time.perf_counter() - started < 1.0


def test_every_logger_is_redacted_at_record_creation(buffer: io.StringIO) -> None:
    settings = Settings(kafka_sasl_password=SecretStr(SECRET))
    redact.install(settings)
    child = logging.getLogger("some.library.deep.child")
    child.propagate = True
    child.debug("config %s", {"security_protocol": "SASL_PLAINTEXT", "x": SECRET})
    child.debug("bad format %d", SECRET)  # formatting fails: args kept, scrubbed
    try:
        raise RuntimeError(f"auth failed for {SECRET}")
    except RuntimeError:
        child.exception("connect")
    child.warning("where", stack_info=True, extra={"harmless": 1})
    text = buffer.getvalue()
    assert SECRET not in text
    assert "auth failed for ***" in text
    assert text.count("***") >= 3


def test_records_made_outside_the_factory_are_scrubbed_by_the_handler_filter(
    buffer: io.StringIO,
) -> None:
    redact.install(None, SECRET)
    record = logging.makeLogRecord({"msg": "remote %s", "args": (SECRET,), "levelno": 40})
    logging.getLogger().handle(record)
    assert SECRET not in buffer.getvalue()
    assert "remote ***" in buffer.getvalue()


def test_install_is_idempotent_and_adds_secrets(buffer: io.StringIO) -> None:
    before = logging.getLogRecordFactory()
    first = redact.install(None, "first-secret")
    second = redact.install(None, "second-secret")
    assert first is second
    logging.getLogger("x").error("first-secret second-secret")
    assert buffer.getvalue().strip() == "*** ***"
    redact.uninstall()
    assert logging.getLogRecordFactory() is before
    logging.getLogger("x").error("first-secret")
    assert "first-secret" in buffer.getvalue()


def test_redacted_records_format_under_the_workers_formatter(buffer: io.StringIO) -> None:
    """faust workers log through mode's ExtensionFormatter, which formats ``msg % args`` after
    wrapping a non-tuple ``args``: a frozen record must still format to its own message."""
    from mode.utils.logging import ExtensionFormatter

    redact.install(None, SECRET)
    errors = io.StringIO()
    handler = logging.StreamHandler(errors)
    handler.setFormatter(ExtensionFormatter(stream=errors, fmt="%(message)s"))
    log = logging.getLogger("watchnext.test.mode")
    log.addHandler(handler)
    try:
        log.warning("plain line without args")
        log.warning("100%% done for %s, password %s", "x", SECRET)
    finally:
        log.removeHandler(handler)
    lines = errors.getvalue().splitlines()
    assert lines == ["plain line without args", "100% done for x, password ***"]
