"""The README's service blocks run as written: each is copied out of the README and run by bash, with
only its fixed ports and data folder swapped for free ones (so it cannot meet another test's)."""

from __future__ import annotations

import os
import re
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from apps.harness.redis_launcher import free_port
from tests.support.helpers import child_env, need_redis_server, run_as_group

ROOT = Path(__file__).resolve().parent.parent
BLOCK = re.compile(r"```bash\n(.*?)```", re.DOTALL)


def readme_block(marker: str) -> str:
    """The one ```bash block of the README that contains ``marker``."""
    found = [b for b in BLOCK.findall((ROOT / "README.md").read_text()) if marker in b]
    assert len(found) == 1, f"{len(found)} README bash blocks contain {marker!r}"
    return str(found[0])


def run_block(
    block: str, tmp_path: Path, ports: dict[str, int]
) -> subprocess.CompletedProcess[str]:
    for fixed, port in ports.items():
        block = re.sub(rf"(?<=[:\s]){fixed}\b", str(port), block)
    block = block.replace("/tmp/qc-redis", str(tmp_path / "redis"))
    env = child_env()
    if "8000" in ports:  # serve's default port, and the client commands' default --api
        env["PORT"] = str(ports["8000"])
    env["PATH"] = f"{Path(sys.executable).parent}{os.pathsep}{env.get('PATH', '')}"
    return run_as_group(["bash", "-c", f"set -e\n{block}"], 120, cwd=tmp_path, env=env)


@pytest.mark.slow  # a Redis, the upstream, serve and a worker, as the README starts them
def test_the_durable_copy_paste_block_runs_two_jobs_to_done(tmp_path: Path) -> None:
    """The README's durable block starts its own persistent Redis, serve and a worker; both jobs
    end done, serve names the Redis it uses, and everything it started is stopped."""
    need_redis_server()
    assert shutil.which("curl"), "the README's block waits with curl"
    ports = {"6390": free_port(), "8000": free_port(), "8081": free_port()}
    try:
        done = run_block(readme_block("REDIS_URL=redis://127.0.0.1:6390/0"), tmp_path, ports)
    finally:  # the block's Redis daemonizes (a session of its own): stop it if the block did not
        subprocess.run(
            ["redis-cli", "-p", str(ports["6390"]), "shutdown", "nosave"],
            capture_output=True,
            timeout=10,
        )
    out = done.stdout + done.stderr
    assert done.returncode == 0, out
    assert len(re.findall(r" done http=200 attempts=1 ", out)) == 2, out
    assert f"Redis redis://127.0.0.1:{ports['6390']}/0 (version " in out
    assert "appendonly yes, appendfsync always" in out
    assert (tmp_path / "redis").is_dir()
    ping = subprocess.run(
        ["redis-cli", "-p", str(ports["6390"]), "ping"], capture_output=True, text=True, timeout=10
    )
    assert "PONG" not in ping.stdout, "the block's Redis is still running"


@pytest.mark.slow  # the upstream and serve, as the README starts them
def test_the_inmemory_block_runs_two_jobs_to_done(tmp_path: Path) -> None:
    """The README's first service block (in-memory) runs both jobs to done and prints stats."""
    assert shutil.which("curl"), "the README's block waits with curl"
    block = readme_block("ALLOWED_HOSTS=127.0.0.1:8081 queue-contrast serve &")
    block += "\nkill $(jobs -p); wait\n"  # the README leaves them running for the walkthrough
    done = run_block(block, tmp_path, {"8000": free_port(), "8081": free_port()})
    out = done.stdout + done.stderr
    assert done.returncode == 0, out
    assert len(re.findall(r" done http=200 attempts=1 ", out)) == 2, out
    assert '"backend":"inmemory"' in out.replace(" ", "")
