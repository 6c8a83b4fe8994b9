"""Who may reach the studio: sharing or binding beyond localhost needs a username and password."""

from __future__ import annotations

import os
import socket
import threading

LOCAL_HOSTS = frozenset({"127.0.0.1", "localhost", "::1"})
SHARE_SERVER = ("api.gradio.app", 443)


class AuthError(ValueError):
    """The requested exposure is not allowed with the given credentials."""


def parse_auth(value: str | None) -> tuple[str, str] | None:
    """'user:password' (or $IRIS_AUTH) to a tuple; None when neither is given."""
    value = value or os.environ.get("IRIS_AUTH")
    if not value:
        return None
    user, sep, password = value.partition(":")
    if not sep or not user or not password:
        raise AuthError("--auth / IRIS_AUTH must look like USER:PASSWORD (both non-empty)")
    return user, password


def check_exposure(share: bool, host: str, auth: tuple[str, str] | None) -> None:
    """Refuse a share link or a non-localhost bind without credentials."""
    if auth is not None:
        return
    if share:
        raise AuthError("refusing to create a public share link without a login: pass --auth USER:PASSWORD "
                        "or set IRIS_AUTH")
    if host not in LOCAL_HOSTS:
        raise AuthError(f"refusing to listen on {host} without a login: pass --auth USER:PASSWORD or set IRIS_AUTH")


def share_server_reachable(timeout_s: float = 5.0) -> bool:
    """True if the Gradio share server answers a TCP connect within the timeout (DNS included)."""
    result: list[bool] = []

    def probe() -> None:
        try:
            with socket.create_connection(SHARE_SERVER, timeout=timeout_s):
                result.append(True)
        except OSError:
            result.append(False)

    thread = threading.Thread(target=probe, daemon=True)
    thread.start()
    thread.join(timeout_s + 1.0)
    return bool(result and result[0])
