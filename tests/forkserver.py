"""`python -m runner ARGS` for the tests, without paying the interpreter start and imports each time.

The suite starts the CLI more than a thousand times, and each start spent about 0.2 s of CPU
importing psycopg, click, structlog and the runner before doing anything: close to half the CPU
time of the whole suite on a 2-core CI machine. A server process (one per pytest process, started
on first use) imports all of that once; each run is then a fork of it, which becomes the CLI
process of that run: a process of its own with the test's arguments, environment, working
directory, ``sys.path[0]`` (as ``-m`` sets it), stdin (/dev/null), stdout and stderr pipes and exit
status, as ``subprocess.run([python, "-m", "runner", ...])`` gives them.

What a fork cannot reproduce runs as a real subprocess instead (:func:`needs_own_interpreter`):
an environment that changes how the interpreter starts (``PYTHON*`` variables other than
``PYTHONUNBUFFERED``, locale variables). Tests that signal or time the process itself start it
with ``subprocess`` (reliability.harness.Spawned), not through here.

Protocol, on a Unix socket: the client sends one JSON line (args, env, cwd) with its three file
descriptors (SCM_RIGHTS); the server forks a waiter, which forks the CLI process, sends its pid
as a line, waits for it and sends its exit status as a line (negative: the signal that ended it,
as subprocess reports it).
"""

from __future__ import annotations

import json
import os
import selectors
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
# What the server imports once (each CLI process would otherwise import it again).
PRELOAD = ("psycopg", "structlog", "click", "runner.cli", "runner.commands", "runner.engine", "runner.cli_diagnose",
           "runner.cli_fleet", "compat.cli", "compat.hook", "runner.yoyo_adapter", "yoyo", "pglast")
_STARTUP_VARIABLES = ("LANG", "LANGUAGE")


def needs_own_interpreter(env: dict[str, str]) -> bool:
    """Whether ``env`` changes how the interpreter starts, compared with this process's environment."""
    def startup(values: dict[str, str]) -> dict[str, str]:
        return {k: v for k, v in values.items() if k != "PYTHONUNBUFFERED"
                and (k.startswith(("PYTHON", "LC_")) or k in _STARTUP_VARIABLES)}
    return startup(env) != startup(dict(os.environ))


# ----------------------------------------------------------------------------- client
class Client:
    """The test process's side: starts the server on first use and stops it at exit."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._server: subprocess.Popen | None = None
        self._path = ""

    def _ensure_server(self) -> str:
        with self._lock:
            if self._server is None or self._server.poll() is not None:
                if self._path:  # a server that died: its socket's folder goes too
                    shutil.rmtree(os.path.dirname(self._path), ignore_errors=True)
                self._path = os.path.join(tempfile.mkdtemp(prefix="migrate-fork-"), "s")
                self._server = subprocess.Popen([sys.executable, __file__, self._path], cwd=ROOT,
                                                env=dict(os.environ), stdin=subprocess.DEVNULL)
                deadline = time.monotonic() + 60
                while not os.path.exists(self._path):
                    if self._server.poll() is not None or time.monotonic() > deadline:
                        raise RuntimeError("the CLI fork server did not start")
                    time.sleep(0.01)
            return self._path

    def stop(self) -> None:
        if self._server is not None and self._server.poll() is None:
            self._server.kill()
            self._server.wait()
        if self._path:
            shutil.rmtree(os.path.dirname(self._path), ignore_errors=True)

    def run(self, args: list[str], env: dict[str, str], cwd: Path, timeout: float) -> tuple[int, str, str]:
        """(exit status, stdout, stderr) of `python -m runner ARGS`; raises subprocess.TimeoutExpired."""
        path = self._ensure_server()
        out_r, out_w = os.pipe()
        err_r, err_w = os.pipe()
        null = os.open(os.devnull, os.O_RDONLY)
        conn = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        try:
            conn.connect(path)
            request = json.dumps({"args": args, "env": env, "cwd": str(cwd)}).encode() + b"\n"
            socket.send_fds(conn, [request], [null, out_w, err_w])
        finally:
            for fd in (null, out_w, err_w):
                os.close(fd)
        return _collect(conn, out_r, err_r, args, timeout)


def _collect(conn: socket.socket, out_r: int, err_r: int, args: list[str], timeout: float) -> tuple[int, str, str]:
    """Read both pipes and the status lines until all are done (or the timeout kills the run)."""
    chunks: dict[object, list[bytes]] = {out_r: [], err_r: [], conn: []}
    deadline = time.monotonic() + timeout
    with selectors.DefaultSelector() as selector:
        for source in chunks:
            selector.register(source, selectors.EVENT_READ)
        open_sources = set(chunks)
        try:
            while open_sources:
                left = deadline - time.monotonic()
                if left <= 0:
                    status = b"".join(chunks[conn]).split(b"\n")
                    if status[0].strip():
                        os.kill(int(status[0]), signal.SIGKILL)
                    raise subprocess.TimeoutExpired([sys.executable, "-m", "runner", *args], timeout)
                for key, _ in selector.select(min(left, 1.0)):
                    source = key.fileobj
                    data = conn.recv(65536) if source is conn else os.read(source, 65536)  # type: ignore[arg-type]
                    if data:
                        chunks[source].append(data)
                    else:
                        selector.unregister(source)
                        open_sources.discard(source)
        finally:
            conn.close()
            os.close(out_r)
            os.close(err_r)
    lines = b"".join(chunks[conn]).decode().split("\n")
    if len(lines) < 2 or not lines[1].strip():
        raise RuntimeError(f"the CLI fork server gave no exit status for migrate {' '.join(args)}")
    decode = lambda parts: b"".join(parts).decode("utf-8", "replace").replace("\r\n", "\n")  # noqa: E731 - as text=True
    return int(lines[1]), decode(chunks[out_r]), decode(chunks[err_r])


# ----------------------------------------------------------------------------- server
def _serve(path: str) -> None:
    import importlib

    for name in PRELOAD:
        importlib.import_module(name)
    parent = os.getppid()
    signal.signal(signal.SIGCHLD, signal.SIG_IGN)  # waiters are reaped by the kernel
    listener = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    listener.bind(path + ".tmp")
    listener.listen(64)
    os.rename(path + ".tmp", path)  # the client waits for the path: it exists once the server listens
    listener.settimeout(1.0)
    while os.getppid() == parent:  # the test process is gone: so is the server
        try:
            conn, _ = listener.accept()
        except TimeoutError:
            continue
        if os.fork() == 0:
            listener.close()
            _wait_for_one(conn)  # never returns
        conn.close()


def _wait_for_one(conn: socket.socket) -> None:
    """The waiter: read the request, fork the CLI process, report its pid and exit status."""
    signal.signal(signal.SIGCHLD, signal.SIG_DFL)
    conn.setblocking(True)
    data, fds, _, _ = socket.recv_fds(conn, 1 << 20, 3)
    while not data.endswith(b"\n"):
        more = conn.recv(1 << 20)
        if not more:
            os._exit(1)
        data += more
    request = json.loads(data)
    pid = os.fork()
    if pid == 0:
        conn.close()
        _be_the_cli(request, fds)  # never returns
    for fd in fds:
        os.close(fd)
    try:
        conn.sendall(f"{pid}\n".encode())
        _, status = os.waitpid(pid, 0)
        conn.sendall(f"{os.waitstatus_to_exitcode(status)}\n".encode())
    except OSError:  # the client gave up (its timeout): nobody to tell
        pass
    os._exit(0)


def _be_the_cli(request: dict, fds: list[int]) -> None:
    """Become `python -m runner ARGS` with the request's environment, directory and pipes."""
    import atexit
    import io
    import random
    import traceback

    for target, fd in enumerate(fds):
        os.dup2(fd, target)
        os.close(fd)
    os.environ.clear()
    os.environ.update(request["env"])
    os.chdir(request["cwd"])
    sys.path[0] = os.getcwd()  # as `python -m` sets it
    sys.argv = [str(ROOT / "runner" / "__main__.py"), *request["args"]]
    random.seed()  # a fork copies the server's generator state
    # New text streams on the new descriptors, with what the interpreter chose for this
    # environment at start (the server started with the same locale and PYTHON* variables).
    unbuffered = bool(os.environ.get("PYTHONUNBUFFERED"))
    streams = []
    for fd, old in enumerate((sys.stdin, sys.stdout, sys.stderr)):
        raw = io.FileIO(fd, "w" if fd else "r", closefd=False)
        buffered = io.BufferedWriter(raw) if fd else io.BufferedReader(raw)
        streams.append(io.TextIOWrapper(buffered, encoding=old.encoding, errors=old.errors,
                                        line_buffering=fd == 2, write_through=unbuffered and fd > 0))
    sys.stdin, sys.stdout, sys.stderr = streams
    code = 0
    try:
        from runner.cli import main

        code = main()
    except SystemExit as done:
        if done.code is None or isinstance(done.code, int):
            code = done.code or 0
        else:
            print(done.code, file=sys.stderr)
            code = 1
    except BaseException:  # noqa: BLE001 - as the interpreter does: the traceback, exit 1
        traceback.print_exc()
        code = 1
    try:
        atexit._run_exitfuncs()
        sys.stdout.flush()
        sys.stderr.flush()
    finally:
        os._exit(code if isinstance(code, int) else 1)


if __name__ == "__main__":
    _serve(sys.argv[1])
