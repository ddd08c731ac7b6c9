"""Secrets never shown: passwords in URLs, DSNs and SQL, redacted wherever text is printed or logged.

:func:`redact_text` is applied to every message, log value and printed document (runner.cli,
runner.logs). It hides, anywhere in the text:

* the password of a URL's user info, ``scheme://user:PASSWORD@host`` and malformed variants (a
  ``/`` or ``;`` before the first ``:``, no scheme at all, a raw ``/ ? # @`` in the password): in any
  run of non-blank characters holding an ``@``, whatever follows the user name's ``:`` up to the
  last ``@``;
* key=value parameters whose key ends in ``password`` or ``passwd`` (``password``, ``sslpassword``,
  ``PGPASSWORD``...), in a URL query (up to ``&``) or a libpq DSN (``password = x``,
  ``password='a b'``, ``password=a\\ b``: up to the closing quote or the first unescaped blank);
* string literals given as passwords in SQL (:func:`mask_sql`).

It prefers hiding too much (a user name, the parameters after a malformed one) to showing a
password.
"""

from __future__ import annotations

import re
from typing import Any
from urllib.parse import urlsplit, urlunsplit

_KEY = r"[A-Za-z_]*pass(?:word|wd)"
# A password parameter in a URL query: the value ends at "&", "#" or a blank.
_QUERY_PARAM = re.compile(rf"(?i)([?&]{_KEY}=)[^&#\s]*")
# A libpq key = value parameter: a quoted value (backslash escapes; unterminated: to the end) or an
# unquoted one up to the first blank that is not escaped.
_DSN_PARAM = re.compile(rf"(?i)((?<![\w?&]){_KEY}\s*=\s*)(?:'(?:[^'\\]|\\.)*(?:'|\\?$)|(?:\\.|[^\s\\])*\\?)",
                        re.DOTALL)
# Text that can hold a URL's user info: a run of non-blank characters with an "@".
_AT_TOKEN = re.compile(r"\S*@\S*")
# What comes before "//" when it is a scheme (``postgresql:``, ``postgresql;``, ``"postgres``).
_SCHEME_END = re.compile(r"(?:^|[^\w:])[A-Za-z][\w+.\-]*[^\w\s]?$")

# SQL: a string literal given as a password (CREATE/ALTER ROLE|USER ... [ENCRYPTED] PASSWORD '...',
# USER MAPPING ... OPTIONS (password '...')): standard, E'', U&'' and dollar-quoted, with comments
# between, adjacent literals continued on the next line, and an unterminated one (a statement cut
# short in a message) masked to the end.
_SQL_GAP = r"(?:\s|/\*.*?\*/|--[^\n]*(?:\n|$))*"
_SQL_QUOTED = r"(?:[eE]|[uU]&)?'(?:[^'\\]|\\.|'')*(?:'|\\?$)"
_SQL_LITERAL = re.compile(
    rf"""(?isx)((?<!\w)"?{_KEY}"?{_SQL_GAP})
    (?:\$(?P<tag>(?:[^\W\d]\w*)?)\$.*?(?:\$(?P=tag)\$|$)     # dollar-quoted
      |{_SQL_QUOTED}(?:\s*\n\s*{_SQL_QUOTED})*            # quoted, continued on following lines
    )""")


def mask_sql(text: str) -> str:
    """``text`` (a SQL statement or a message quoting one) with password literals masked."""
    if "pass" not in text.lower():
        return text
    return _SQL_LITERAL.sub(r"\1'***'", text)


def _redact_user_info(match: re.Match[str]) -> str:
    token = match.group(0)
    head, _, tail = token.rpartition("@")
    slashes = head.find("//")
    start = slashes + 2 if slashes >= 0 and _SCHEME_END.search(head[:slashes]) else 0
    colon = head.find(":", start)
    if colon < 0:
        return token  # a user name without a password
    return f"{head[:colon + 1]}***@{tail}"


def redact_text(text: str) -> str:
    """Any message or log value with the passwords of URLs, DSNs and SQL inside it hidden."""
    lowered = text.lower()
    if "@" not in text and "pass" not in lowered:
        return text
    if "pass" in lowered:
        text = mask_sql(text)
        text = _QUERY_PARAM.sub(r"\1***", text)
        text = _DSN_PARAM.sub(r"\1***", text)
    if "@" in text:
        text = _AT_TOKEN.sub(_redact_user_info, text)
    return text


def redact_data(value: Any) -> Any:
    """``value`` (a JSON-like document or a log value) with :func:`redact_text` applied to every
    string in it (before it is serialised: an escaped newline would hide a SQL literal's continuation)."""
    if isinstance(value, str):
        return redact_text(value)
    if isinstance(value, (list, tuple)):
        return [redact_data(v) for v in value]
    if isinstance(value, dict):
        return {k: redact_data(v) for k, v in value.items()}
    return value


def redact_url(url: str) -> str:
    """Return ``url`` with any password replaced by ``***`` (its other parts kept when it parses)."""
    try:
        parts = urlsplit(url)
        password = parts.password
    except ValueError:
        password = None
        parts = None
    if parts is not None and password is not None:
        userinfo, _, hostinfo = parts.netloc.rpartition("@")
        user = userinfo.split(":", 1)[0]
        url = urlunsplit((parts.scheme, f"{user}:***@{hostinfo}", parts.path, parts.query, parts.fragment))
    return redact_text(url)
