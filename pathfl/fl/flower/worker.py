"""A long-running site worker: keeps torch, scikit-learn and the site's bags loaded between
rounds, so the per-message ``flwr-clientapp`` process (Flower 1.41 and 1.42 start a fresh one for
every message and have no long-running ClientApp mode) only forwards the request.

The worker listens on a Unix socket in the site's state directory; requests are authenticated
with a random key in a 0600 file beside it (``multiprocessing.connection`` HMAC challenge).
It never opens a network port. The ClientApp falls back to computing in its own process when
the worker cannot be reached, so a dead worker costs speed, not the round.

Start: ``python -m pathfl.fl.flower.worker SOCKET`` (``pathfl fl site`` does it).
"""

from __future__ import annotations

import logging
import os
import secrets
import signal
import sys
import traceback
from multiprocessing.connection import Client, Listener
from pathlib import Path
from typing import Any

logger = logging.getLogger(__name__)

NODE_WORKER = "worker"  # node-config key: the worker's socket path


def key_path(socket_path: str | os.PathLike[str]) -> Path:
    return Path(f"{socket_path}.key")


def serve(socket_path: str | os.PathLike[str]) -> None:
    """Answer requests until SIGTERM/SIGINT (both end it at once, also mid-request). One
    request at a time (Flower sends a site one message at a time)."""
    import pathfl.survival.data
    import pathfl.survival.train  # noqa: F401 - warm imports before the first request
    from pathfl.fl.site import SiteCache, handle

    sock = Path(socket_path)
    sock.parent.mkdir(parents=True, exist_ok=True)
    sock.unlink(missing_ok=True)
    key = secrets.token_bytes(32)
    kp = key_path(sock)
    fd = os.open(kp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "wb") as f:
        f.write(key)
    cache = SiteCache()
    listener = Listener(str(sock), family="AF_UNIX", authkey=key)
    os.chmod(sock, 0o600)

    def _stop(*_: object) -> None:
        raise SystemExit(0)

    signal.signal(signal.SIGTERM, _stop)
    logger.info("site worker listening on %s", sock)
    try:
        while True:
            try:
                conn = listener.accept()
            except (OSError, EOFError) as e:  # failed authentication, client gone
                logger.warning("rejected a connection: %s", e)
                continue
            with conn:
                try:
                    kind, node_config, cfg, arrays = conn.recv()
                    result = {"ok": True, **handle(kind, node_config, cfg, arrays, cache=cache)}
                except Exception as e:
                    logger.error("request failed: %s", e)
                    result = {
                        "ok": False,
                        "error": f"{type(e).__name__}: {e}",
                        "trace": traceback.format_exc()[-2000:],
                    }
                try:
                    conn.send(result)
                except (OSError, EOFError) as e:
                    logger.warning("could not send the reply: %s", e)
    finally:
        listener.close()
        sock.unlink(missing_ok=True)
        kp.unlink(missing_ok=True)


class WorkerUnavailableError(ConnectionError):
    """The site worker is not running or refused the connection."""


def call(
    socket_path: str,
    kind: str,
    node_config: dict[str, Any],
    cfg: dict[str, Any],
    arrays: list | None,
) -> dict[str, Any]:
    """Send one request to the worker; raise RuntimeError with the worker's error message
    when the request itself failed, WorkerUnavailableError when the worker is unreachable."""
    try:
        key = key_path(socket_path).read_bytes()
        conn = Client(socket_path, family="AF_UNIX", authkey=key)
    except (OSError, EOFError) as e:
        raise WorkerUnavailableError(f"site worker at {socket_path}: {e}") from e
    with conn:
        conn.send((kind, node_config, cfg, arrays))
        result = conn.recv()
    if not result.get("ok"):
        raise RuntimeError(f"site worker: {result.get('error')}\n{result.get('trace', '')}")
    return result


def main() -> None:
    from pathfl.fl.flower.lifetime import watch_parent

    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s: %(message)s")
    if len(sys.argv) != 2:
        sys.exit("usage: python -m pathfl.fl.flower.worker SOCKET_PATH")
    watch_parent()  # pathfl gone (even SIGKILLed) → SIGTERM → the socket is removed
    code: int | str | None = 0
    try:
        serve(sys.argv[1])
    except SystemExit as e:  # SIGTERM: serve() has removed its socket and key
        code = e.code
    # skip the interpreter's teardown of torch & co. (seconds on a busy machine): nothing is
    # left to flush but the log
    logging.shutdown()
    sys.stdout.flush()
    os._exit(code if isinstance(code, int) else 1)


if __name__ == "__main__":
    main()


def socket_path_for(state_dir: str | os.PathLike[str]) -> str:
    """``STATE/worker.sock``, or a short path under /tmp when that is too long for a Unix
    socket (about 100 bytes)."""
    import hashlib
    import tempfile

    path = Path(state_dir).resolve() / "worker.sock"
    if len(str(path)) < 100:
        return str(path)
    digest = hashlib.sha256(str(path).encode()).hexdigest()[:12]
    return str(Path(tempfile.gettempdir()) / f"pathfl-worker-{digest}.sock")
