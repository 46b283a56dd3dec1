"""Keep secrets out of every log line, at every level, from every library.

At DEBUG, kafka-python logs its whole configuration dict (``sasl_plain_password`` in clear), and
aiokafka and faust log their settings and connections too; a debug session or a log shipper
would then carry the Kafka password. Redaction therefore happens where every record is born:
``install`` wraps the log record factory, so each record is formatted once and scrubbed before
any logger, filter, handler or formatter sees it, whatever logger it came from and whatever
handlers a library (faust's ``dictConfig``) installs later. Two things are scrubbed:

- every occurrence of a known secret value (the ``SecretStr`` fields of ``Settings``, and any
  value passed to ``install``), also in its ``repr``/JSON-escaped forms;
- generically, the value of any key that names a password or secret (``sasl_plain_password``,
  ``ssl_password``, ``password``, ``client_secret``...) in ``key: value`` or ``key=value``
  form, as in a dict or keyword repr, so a secret the process was never told about (one read
  by a library from its own config) is caught too.

Traceback and stack text are scrubbed as well. A ``RedactingFilter`` on the root logger's
handlers also scrubs records that bypass the factory (``logging.makeLogRecord``, records
received from another process). Attributes passed with ``extra=`` are not scrubbed.
"""

from __future__ import annotations

import json
import logging
import re
import traceback
from collections.abc import Callable, Iterable
from typing import Any

from pydantic import SecretStr

from watchnext.settings import Settings

REDACTED = "***"

# Any ``key: value`` / ``key=value``; the callback masks the value only when the key names a
# secret. A key starts only where a word starts and every repetition is possessive (bounded for
# quoted values), so a long log line is scanned in linear time, never backtracked over.
_KEY_VALUE = re.compile(
    r"""(?<![\w.-])(?P<key>[\w.-]++)(?P<sep>['"]?+\s*+[:=]\s*+)"""
    r"""(?P<value>b?'(?:[^'\\\n]|\\.){0,4096}+'|b?"(?:[^"\\\n]|\\.){0,4096}+"|[^\s,;)}\]'"]++)?"""
)
_SECRET_NAME = re.compile(r"password|passwd|secret", re.IGNORECASE)


def _mask_value(match: re.Match[str]) -> str:
    value = match["value"]
    if value is None or not _SECRET_NAME.search(match["key"]):
        return match[0]
    if value in ("None", "null", "''", '""'):
        return match[0]  # nothing to hide; keeping it says the option was unset
    prefix = "b" if value[:2] in ("b'", 'b"') else ""
    quote = value[len(prefix) : len(prefix) + 1]
    masked = f"{prefix}{quote}{REDACTED}{quote}" if quote in ("'", '"') else REDACTED
    return match["key"] + match["sep"] + masked


class Redactor:
    """Replaces known secret values and secret-named keys' values in text with ``***``.

    Args:
        secrets: Secret values to hide wherever they appear.
    """

    def __init__(self, secrets: Iterable[str] = ()) -> None:
        self._secrets: set[str] = set()
        self._literal: re.Pattern[str] | None = None
        self.add(*secrets)

    def add(self, *secrets: str) -> None:
        """Hide these values too (empty ones are ignored: they would match everywhere)."""
        forms = set(self._secrets)
        for secret in secrets:
            if not secret:
                continue
            forms |= {secret, repr(secret)[1:-1], json.dumps(secret)[1:-1]}
        forms.discard("")
        if forms == self._secrets:
            return
        self._secrets = forms
        # Longest first, so a secret that contains another is replaced whole.
        alternatives = sorted(forms, key=len, reverse=True)
        self._literal = re.compile("|".join(re.escape(s) for s in alternatives))

    def redact(self, text: str) -> str:
        """``text`` with every secret value and secret-named key's value masked."""
        if self._literal is not None:
            text = self._literal.sub(REDACTED, text)
        lowered = text.lower()
        if "pass" not in lowered and "secret" not in lowered:
            return text  # the common case: no key regex over every debug line
        return _KEY_VALUE.sub(_mask_value, text)

    def redact_record(self, record: logging.LogRecord) -> None:
        """Format the record's message, scrub it and its traceback, and freeze it (no args)."""
        try:
            message = record.getMessage()
        except Exception:  # bad format args: keep them visible, but scrubbed
            message = f"{record.msg!s} {record.args!r}"
        record.msg = self.redact(message)
        # an empty tuple, not None: mode's formatter wraps a non-tuple in a tuple and formats
        # ``msg % (None,)`` (a "not all arguments converted" logging error on every line)
        record.args = ()
        if record.exc_info and not record.exc_text:
            # Formatters use exc_text when it is set; it is formatted here so it is scrubbed.
            record.exc_text = "".join(traceback.format_exception(*record.exc_info)).rstrip("\n")
        if record.exc_text:
            record.exc_text = self.redact(record.exc_text)
        if record.stack_info:
            record.stack_info = self.redact(record.stack_info)


class RedactingFilter(logging.Filter):
    """A handler filter that scrubs each record (for records not made by the factory)."""

    def __init__(self, redactor: Redactor) -> None:
        super().__init__()
        self.redactor = redactor

    def filter(self, record: logging.LogRecord) -> bool:
        self.redactor.redact_record(record)
        return True


class _RedactingFactory:
    """The log record factory ``install`` sets: the previous factory, then redaction."""

    def __init__(self, previous: Callable[..., logging.LogRecord], redactor: Redactor) -> None:
        self.previous = previous
        self.redactor = redactor

    def __call__(self, *args: Any, **kwargs: Any) -> logging.LogRecord:
        record = self.previous(*args, **kwargs)
        self.redactor.redact_record(record)
        return record


def settings_secrets(settings: Settings) -> list[str]:
    """The values of every ``SecretStr`` field of ``settings``."""
    values = []
    for name in type(settings).model_fields:
        value = getattr(settings, name)
        if isinstance(value, SecretStr):
            values.append(value.get_secret_value())
    return values


def install(settings: Settings | None = None, *secrets: str) -> Redactor:
    """Redact every log record of this process from now on; idempotent, returns the redactor.

    Call it before the first Kafka client is built (kafka-python logs its configuration when
    it starts). A second call adds its secrets to the installed redactor.

    Args:
        settings: Its ``SecretStr`` values are hidden (the Kafka SASL password).
        *secrets: More values to hide.
    """
    values = [*(settings_secrets(settings) if settings is not None else []), *secrets]
    current = logging.getLogRecordFactory()
    if isinstance(current, _RedactingFactory):
        redactor = current.redactor
        redactor.add(*values)
    else:
        redactor = Redactor(values)
        logging.setLogRecordFactory(_RedactingFactory(current, redactor))
    for handler in logging.getLogger().handlers:
        if not any(isinstance(f, RedactingFilter) for f in handler.filters):
            handler.addFilter(RedactingFilter(redactor))
    return redactor


def uninstall() -> None:
    """Undo ``install`` (tests): restore the previous record factory, drop handler filters."""
    current = logging.getLogRecordFactory()
    if isinstance(current, _RedactingFactory):
        logging.setLogRecordFactory(current.previous)
    for handler in logging.getLogger().handlers:
        for f in [f for f in handler.filters if isinstance(f, RedactingFilter)]:
            handler.removeFilter(f)
