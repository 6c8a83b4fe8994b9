"""Sharing and binding rules, the demo case, and run_app's refusals (no browser)."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

from app.auth import AuthError, check_exposure, parse_auth
from app.demo import DEMO_NAME, ensure_demo_case
from storage import Storage

ROOT = Path(__file__).resolve().parents[2]


def test_exposure_rules(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("IRIS_AUTH", raising=False)
    check_exposure(False, "127.0.0.1", None)
    with pytest.raises(AuthError, match="share link"):
        check_exposure(True, "127.0.0.1", None)
    with pytest.raises(AuthError, match="0.0.0.0"):
        check_exposure(False, "0.0.0.0", None)
    check_exposure(True, "0.0.0.0", ("u", "p"))
    assert parse_auth("ann:secret") == ("ann", "secret")
    with pytest.raises(AuthError):
        parse_auth("nopassword")
    monkeypatch.setenv("IRIS_AUTH", "env:pw")
    assert parse_auth(None) == ("env", "pw")


def test_demo_case_is_created_once(tmp_path: Path) -> None:
    storage = Storage.open(None, tmp_path)
    case = ensure_demo_case(storage, tmp_path)
    assert case is not None and case.name == DEMO_NAME
    assert {a.class_name for a in storage.annotations.list_for_case(case.id)} == {"grey_matter", "white_matter"}
    assert ensure_demo_case(storage, tmp_path) is None
    storage.close()


def run_app(*args: str, timeout: float) -> subprocess.CompletedProcess[str]:
    env = {k: v for k, v in os.environ.items() if k != "IRIS_AUTH"} | {"GRADIO_ANALYTICS_ENABLED": "False"}
    return subprocess.run([sys.executable, str(ROOT / "run_app.py"), *args], capture_output=True, text=True,
                          timeout=timeout, env=env, cwd=ROOT)


def test_share_without_auth_is_refused(tmp_path: Path) -> None:
    result = run_app("--share", "--data-dir", str(tmp_path), timeout=600)
    assert result.returncode == 2 and "without a login" in result.stderr


def test_share_without_internet_fails_clearly(tmp_path: Path) -> None:
    result = run_app("--share", "--auth", "u:p", "--data-dir", str(tmp_path), timeout=600)
    assert result.returncode != 0 and "share" in result.stderr


def test_help_documents_options() -> None:
    out = run_app("--help", timeout=600).stdout
    for option in ("--share", "--host", "--port", "--data-dir", "--db-url", "--device", "--auth", "--weights"):
        assert option in out
