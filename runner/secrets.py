"""Secrets never shown: passwords in URLs and DSNs, redacted wherever text is printed or logged."""

from __future__ import annotations

import re
from urllib.parse import urlsplit, urlunsplit


def redact_url(url: str) -> str:
    """Return ``url`` with any password replaced by ``***``."""
    try:
        parts = urlsplit(url)
        password = parts.password
    except ValueError:
        password = None
        parts = None
    if parts is not None and password is not None:
        userinfo, _, hostinfo = parts.netloc.rpartition("@")
        user = userinfo.split(":", 1)[0]
        return urlunsplit((parts.scheme, f"{user}:***@{hostinfo}", parts.path, _redact_query(parts.query),
                           parts.fragment))
    # Unparseable (a password with "/", "?" or "#" not percent-encoded, or no scheme at all):
    # strip anything between "user:" and the last "@", and password= parameters.
    if "://" in url:
        url = re.sub(r"(://[^:/@]*:)[^@]*@", r"\1***@", url)
    else:
        url = re.sub(r"^([^:/@\s]*:)[^@\s]*@", r"\1***@", url)
    return re.sub(r"(password=)[^&\s]*", r"\1***", url, flags=re.I)


def _redact_query(query: str) -> str:
    return re.sub(r"(password=)[^&]*", r"\1***", query, flags=re.I)


def redact_text(text: str) -> str:
    """Any message or log value with passwords of URLs inside it redacted."""
    return redact_url(text) if "://" in text or "password" in text.lower() else text


def mask_sql(text: str) -> str:
    """``text`` (a SQL statement or a message quoting one) with password literals masked."""
    return re.sub(r"(?i)(\bpassword\s+)'(?:[^']|'')*'", r"\1'***'", text)
