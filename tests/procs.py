"""Helpers to run callscribe commands as real processes in tests."""

from __future__ import annotations

import os
import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import httpx

CLI = [sys.executable, "-m", "callscribe", "--env-file", "/dev/null"]


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def clean_env(**extra: str) -> dict[str, str]:
    """The test's environment without settings that would leak in, plus ``extra``."""
    prefixes = ("GLADIA_", "TWILIO_", "REDIS_", "DATABASE_", "SINKS", "ENGINE", "WEBHOOK_", "PUBLIC_URL")
    return {k: v for k, v in os.environ.items() if not k.startswith(prefixes)} | extra


def wait_http(url: str, proc: subprocess.Popen, timeout: float = 30.0) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise RuntimeError(f"{proc.args} exited with {proc.returncode}")
        try:
            httpx.get(url, timeout=0.5)
            return
        except httpx.HTTPError:
            time.sleep(0.1)
    raise TimeoutError(url)


@contextmanager
def running(
    args: list[str], env: dict[str, str], ready_url: str, log: Path | None = None
) -> Iterator[subprocess.Popen]:
    """``callscribe ARGS`` as a process, until the block ends; ``ready_url`` answers once it is up."""
    out = log.open("wb") if log else subprocess.DEVNULL
    proc = subprocess.Popen([*CLI, *args], stdout=out, stderr=subprocess.STDOUT, env=env)
    try:
        wait_http(ready_url, proc)
        yield proc
    finally:
        proc.terminate()
        try:
            proc.wait(timeout=20)
        except subprocess.TimeoutExpired:
            proc.kill()
        if log:
            out.close()  # type: ignore[union-attr]


@contextmanager
def fake_gladia(script: Path, api_key: str) -> Iterator[str]:
    """A ``callscribe fake-gladia`` process; yields its base URL."""
    port = free_port()
    url = f"http://127.0.0.1:{port}"
    args = ["fake-gladia", "--port", str(port), "--api-key", api_key, "--script", str(script)]
    with running(args, clean_env(), f"{url}/v2/live/none"):
        yield url
