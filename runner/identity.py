"""Who is running: safe in containers with an arbitrary UID and no passwd entry."""

from __future__ import annotations

import functools
import os
import socket


@functools.cache  # the process's identity does not change during a run
def os_user() -> str:
    """The OS user name, without ``getpass.getuser()`` (which raises without a passwd entry)."""
    for var in ("LOGNAME", "USER", "LNAME", "USERNAME"):
        value = os.environ.get(var)
        if value:
            return value
    try:
        import pwd

        return pwd.getpwuid(os.getuid()).pw_name
    except (KeyError, ImportError, OSError):
        return f"uid {os.getuid()}" if hasattr(os, "getuid") else "unknown"


@functools.cache
def host() -> str:
    try:
        return socket.gethostname() or "unknown"
    except OSError:
        return "unknown"


@functools.cache  # the process's identity does not change during a run
def actor(db_user: str | None) -> str:
    """``dbuser (osuser@host pid N)``: who applied a migration."""
    who = f"{os_user()}@{host()} pid {os.getpid()}"
    return f"{db_user} ({who})" if db_user else who
