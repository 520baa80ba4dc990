"""Live reload and signals against hostile input, end to end: a real ``nsp-proxy run`` process.

Bad edits of every kind are refused while traffic goes on (last good generation in force, each counted as a
failed reload, no traceback, bounded memory), and SIGHUP never kills the process, from its first moments on.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import httpx
import pytest
import yaml

from tests.support import REPO, Backend, free_port, wait_for_port, wait_until
from tests.test_config_input_e2e import BOMB, base_config

BAD_EDITS = [
    pytest.param(BOMB, id="alias-bomb"),
    pytest.param("perimeters: " + "[" * 1000 + "]" * 1000 + "\n", id="nesting-1000"),
    pytest.param("settings:\n  metrics: " + "9" * 5000 + "\n", id="int-5000-digits"),
    pytest.param("settings:\n  dns:\n    timeout: .inf\n", id="infinity"),
    pytest.param(b"perimeters:\n  - name: caf\xe9\n", id="non-utf8"),
    pytest.param("", id="empty"),
    pytest.param('{"arm": "missing.json", "bindings": [1, 2]}', id="bindings-a-list"),
    pytest.param("perimeters:\n  - name: p\n    properties: true\n", id="properties-true"),
]


def vm_rss_mb(pid: int) -> float:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) / 1024
    return 0.0


def allowed_config(listen: int, upstream: int) -> dict[str, Any]:
    document = base_config(listen)
    document["perimeters"][0]["profiles"][0]["accessRules"][0]["addressPrefixes"] = ["127.0.0.1/32"]
    document["perimeters"][0]["resourceAssociations"][0]["local"]["upstream"] = f"http://127.0.0.1:{upstream}"
    return document


@pytest.mark.parametrize("edit", BAD_EDITS)
def test_bad_live_edit_is_refused_and_traffic_goes_on(nsp_proxy, backend: Backend, edit: str | bytes) -> None:
    listen = free_port()
    proxy = nsp_proxy(allowed_config(listen, backend.port))
    url = f"http://127.0.0.1:{listen}/c/b"
    assert httpx.get(url, timeout=5).status_code == 200
    proxy.config_path.write_bytes(edit if isinstance(edit, bytes) else edit.encode("utf-8"))
    assert wait_until(lambda: proxy.metric("nsp_config_reloads_total", result="failure") == 1, timeout=15), \
        proxy.stderr()
    assert httpx.get(url, timeout=5).status_code == 200
    assert proxy.metric("nsp_config_generation") == 1
    assert proxy.metric("nsp_config_reloads_total", result="success") == 0
    assert vm_rss_mb(proxy.process.pid) < 300, "refusing the edit took too much memory"
    assert "Traceback" not in proxy.stderr()
    assert f"{proxy.config_path}" in proxy.stderr()
    # The next good edit still applies.
    proxy.write_config(allowed_config(listen, backend.port) | {"apiVersion": "nsp-proxy/v1"})
    assert wait_until(lambda: proxy.metric("nsp_config_generation") == 2, timeout=15), proxy.stderr()


def _sighup_disposition_set(pid: int) -> bool:
    """SIGHUP is ignored or caught (SigIgn/SigCgt bit 0) in ``pid``."""
    status = Path(f"/proc/{pid}/status").read_text()
    masks = {k: int(v, 16) for k, v in (line.split(":\t") for line in status.splitlines()
                                        if line.startswith(("SigIgn", "SigCgt")))}
    return bool((masks["SigIgn"] | masks["SigCgt"]) & 1)


def _libyaml_loaded(pid: int) -> bool:
    """The process has started importing nsp-proxy's own modules (proxy.config.loader loads PyYAML's C extension)."""
    try:
        return "_yaml" in Path(f"/proc/{pid}/maps").read_text()
    except OSError:
        return False


def test_sighup_from_the_first_moment_never_kills_the_proxy(tmp_path: Path, backend: Backend) -> None:
    """SIGHUP, repeatedly, from the moment nsp-proxy's modules load (well before the listeners open, when it
    used to kill the process) until it serves, and while it serves: it survives, serves, and stops cleanly."""
    listen, metrics = free_port(), free_port()
    config = tmp_path / "perimeter.yaml"
    config.write_text(yaml.safe_dump(allowed_config(listen, backend.port)), encoding="utf-8")
    stderr = (tmp_path / "stderr").open("w")
    process = subprocess.Popen([sys.executable, "-m", "proxy.cli", "run", "--config", str(config), "--access-log",
                                str(tmp_path / "access.jsonl"), "--metrics", f"127.0.0.1:{metrics}"],
                               cwd=REPO, stdout=subprocess.DEVNULL, stderr=stderr)
    try:
        assert wait_until(lambda: _libyaml_loaded(process.pid) or process.poll() is not None, timeout=20)
        assert _sighup_disposition_set(process.pid), "SIGHUP would kill the process while it starts"
        sent = 0
        deadline = time.monotonic() + 30
        while time.monotonic() < deadline and process.poll() is None:
            os.kill(process.pid, signal.SIGHUP)
            sent += 1
            try:
                wait_for_port(listen, timeout=0.02)
                break
            except (RuntimeError, TimeoutError):
                continue
        assert process.poll() is None, f"killed after {sent} SIGHUPs:\n{(tmp_path / 'stderr').read_text()}"
        for _ in range(20):
            os.kill(process.pid, signal.SIGHUP)
            time.sleep(0.01)
        assert httpx.get(f"http://127.0.0.1:{listen}/c/b", timeout=5).status_code == 200
        assert process.poll() is None
        process.send_signal(signal.SIGTERM)
        assert process.wait(timeout=20) == 0
    finally:
        if process.poll() is None:
            process.kill()
            process.wait()
        stderr.close()
    assert "Traceback" not in (tmp_path / "stderr").read_text()
