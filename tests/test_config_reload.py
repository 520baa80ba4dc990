"""Reloading, in process: the new generation is built off the event loop, a reload that fails for any reason
keeps the generation in force and is counted, and the initial load is not a reload.

The end-to-end behaviour (a real proxy, real edits) is in test_reload_e2e.py; these tests reach what a live
process cannot show precisely: how long the event loop stalls, a bug inside the compiler, peak memory.
"""

from __future__ import annotations

import asyncio
import gc
import time
import tracemalloc
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
import yaml

from proxy import runtime as runtime_module
from proxy.config.loader import load_config
from proxy.gcpolicy import LongLived
from proxy.runtime import Overrides, Runtime
from proxy.telemetry import METRIC_RELOADS
from tests.support import free_port

STORAGE_ID = "/subscriptions/00000000-0000-0000-0000-000000000000/resourceGroups/rg/providers/Microsoft.Storage/" \
             "storageAccounts/st1"


def big_config(rules: int, listen: int, first_prefix: int = 0) -> dict[str, Any]:
    """``rules`` inbound rules in profiles of 200 (Azure's limit), one association on ``listen``."""
    profiles = []
    for p in range(max(1, rules // 200)):
        profiles.append({"name": f"prof{p}", "accessRules": [
            {"name": f"r{n}", "direction": "Inbound",
             "addressPrefixes": [f"10.{(n + first_prefix) // 256 % 256}.{(n + first_prefix) % 256}.0/24"]}
            for n in range(p * 200, min(rules, (p + 1) * 200))]})
    return {"perimeters": [{"name": "big", "profiles": profiles, "resourceAssociations": [{
        "name": "st1", "privateLinkResource": {"id": STORAGE_ID}, "profile": "prof0", "accessMode": "Enforced",
        "local": {"listen": f"127.0.0.1:{listen}", "upstream": "http://127.0.0.1:9"}}]}]}


@pytest.fixture
def make_runtime(tmp_path: Path) -> Iterator[Callable[[dict[str, Any]], Runtime]]:
    made: list[Runtime] = []

    def make(document: dict[str, Any]) -> Runtime:
        path = tmp_path / "perimeter.yaml"
        path.write_text(yaml.safe_dump(document), encoding="utf-8")
        runtime = Runtime(load_config(path), Overrides(access_log=str(tmp_path / "access.jsonl"),
                                                       metrics_disabled=True), config_path=str(path))
        made.append(runtime)
        return runtime

    yield make
    for runtime in made:
        runtime.close()
    gc.unfreeze()  # a successful reload froze this test process's objects (proxy.gcpolicy.LongLived)


def reloads(runtime: Runtime, result: str) -> float:
    return runtime.metrics.registry.get_sample_value(f"{METRIC_RELOADS}_total", {"result": result})


def rewrite(runtime: Runtime, document: dict[str, Any] | str) -> None:
    text = document if isinstance(document, str) else yaml.safe_dump(document)
    Path(runtime.config_path or "").write_text(text, encoding="utf-8")


async def reload_measuring_stalls(runtime: Runtime) -> tuple[bool, float]:
    """Reload while a ticker runs on the loop; the longest gap between its ticks is how long traffic stalls."""
    longest = 0.0
    done = False

    async def tick() -> None:
        nonlocal longest
        last = time.perf_counter()
        while not done:
            await asyncio.sleep(0.002)
            now = time.perf_counter()
            longest, last = max(longest, now - last), now

    ticker = asyncio.create_task(tick())
    await asyncio.sleep(0.01)
    ok = await runtime.reload()
    done = True
    await ticker
    return ok, longest


def test_initial_load_is_not_a_reload(make_runtime: Callable[..., Runtime]) -> None:
    runtime = make_runtime(big_config(10, free_port()))
    assert (reloads(runtime, "success"), reloads(runtime, "failure")) == (0, 0)
    assert runtime.policy.generation == 1


def test_reload_of_10000_rules_does_not_stall_the_event_loop(make_runtime: Callable[..., Runtime]) -> None:
    """Loading 10,000 rules takes about a second of CPU; the loop must keep turning meanwhile (it was blocked
    for all of it before; then, in a thread, for up to 0.7 s by garbage collections). The bound is generous for
    a loaded 2-core machine (about 30 ms is typical); bench/ measures request latency."""
    listen = free_port()
    runtime = make_runtime(big_config(10_000, listen))
    rewrite(runtime, big_config(10_000, listen, first_prefix=1))
    started = time.perf_counter()
    ok, longest = asyncio.run(reload_measuring_stalls(runtime))
    took = time.perf_counter() - started
    assert ok and runtime.policy.generation == 2
    assert longest < 0.2, f"the event loop stalled {longest:.3f} s during a {took:.2f} s reload"


def _bug_in_compile(monkeypatch: pytest.MonkeyPatch, runtime: Runtime) -> Callable[[], None]:
    def broken(*_args: Any) -> None:
        raise RuntimeError("compiler bug")
    monkeypatch.setattr(runtime_module, "compile_policy", broken)
    rewrite(runtime, big_config(20, free_port()))
    return lambda: None


def _refused_file(monkeypatch: pytest.MonkeyPatch, runtime: Runtime) -> Callable[[], None]:
    rewrite(runtime, "perimeters: [{name: p1, colour: red}]\n")
    return lambda: None


def _alias_bomb(monkeypatch: pytest.MonkeyPatch, runtime: Runtime) -> Callable[[], None]:
    rewrite(runtime, "a: &a [lol, lol, lol, lol, lol, lol, lol, lol, lol, lol]\n" + "".join(
        f"{chr(98 + i)}: &{chr(98 + i)} [{', '.join([f'*{chr(97 + i)}'] * 10)}]\n" for i in range(9)))
    return lambda: None


def _listeners_fail(monkeypatch: pytest.MonkeyPatch, runtime: Runtime) -> Callable[[], None]:
    rewrite(runtime, big_config(20, free_port()))
    calls = []

    def apply() -> None:  # mitmproxy refusing the new listeners (OptionsError); the old ones it takes back
        calls.append(runtime.policy.generation)
        if len(calls) == 1:
            raise ValueError("mitmproxy refused the listeners")
    return apply


def _port_taken(monkeypatch: pytest.MonkeyPatch, runtime: Runtime) -> Callable[[], None]:
    import socket

    holder = socket.socket()
    holder.bind(("127.0.0.1", 0))
    holder.listen()
    monkeypatch.setattr(runtime, "_holder", holder, raising=False)  # closed with the runtime's test
    rewrite(runtime, big_config(20, holder.getsockname()[1]))
    return lambda: None


def _access_log_directory(monkeypatch: pytest.MonkeyPatch, runtime: Runtime) -> Callable[[], None]:
    monkeypatch.setattr(runtime, "overrides", Overrides(metrics_disabled=True))
    document = big_config(20, runtime.policy.listeners[0][1])
    document["settings"] = {"accessLog": str(Path(runtime.config_path or "").parent)}
    rewrite(runtime, document)
    return lambda: None


@pytest.mark.parametrize("break_it", [
    pytest.param(_bug_in_compile, id="internal-error-in-compile"),
    pytest.param(_refused_file, id="refused-file"),
    pytest.param(_alias_bomb, id="alias-bomb"),
    pytest.param(_listeners_fail, id="listeners-cannot-be-applied"),
    pytest.param(_port_taken, id="new-listener-port-taken"),
    pytest.param(_access_log_directory, id="access-log-is-a-directory"),
])
def test_failed_reload_keeps_the_generation_and_is_counted(make_runtime: Callable[..., Runtime],
                                                           monkeypatch: pytest.MonkeyPatch,
                                                           caplog: pytest.LogCaptureFixture,
                                                           break_it: Callable[..., Callable[[], None]]) -> None:
    runtime = make_runtime(big_config(10, free_port()))
    before = runtime.policy
    apply = break_it(monkeypatch, runtime)
    assert asyncio.run(runtime.reload(apply)) is False
    assert runtime.policy is before
    assert (reloads(runtime, "success"), reloads(runtime, "failure")) == (0, 1)
    assert "config reload refused, keeping generation 1 in force" in caplog.text
    assert "Traceback" not in caplog.text


def test_alias_bomb_reload_is_refused_within_bounded_memory(make_runtime: Callable[..., Runtime]) -> None:
    """A billion-laughs edit is refused by counting, before anything is expanded (it took 800 MB before)."""
    runtime = make_runtime(big_config(10, free_port()))
    _alias_bomb(None, runtime)  # type: ignore[arg-type]
    tracemalloc.start()
    try:
        with pytest.raises(Exception, match="more than 1000000 values"):
            runtime.prepare()
        peak = tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()
    assert peak < 20 * 1024 * 1024, f"refusing the bomb took {peak / 1e6:.0f} MB"


def test_objects_in_force_are_frozen_and_released_at_most_hold_seconds_later() -> None:
    """After a reload the heap is kept out of full collections (they stalled traffic ~90 ms right after each
    reload), but cyclic garbage is reclaimed at the latest ``hold_seconds`` after the first freeze, even when
    reloads keep coming (a reload storm must not hold garbage forever)."""
    held = LongLived(hold_seconds=0.2)
    try:
        held.freeze()
        assert gc.get_freeze_count() > 0
        time.sleep(0.12)
        held.freeze()  # another reload: does not postpone the release
        held.tick()
        assert gc.get_freeze_count() > 0
        time.sleep(0.1)
        held.tick()
        assert gc.get_freeze_count() == 0
    finally:
        gc.unfreeze()


def test_a_successful_reload_freezes_the_generation_in_force(make_runtime: Callable[..., Runtime]) -> None:
    runtime = make_runtime(big_config(10, free_port()))
    gc.unfreeze()
    rewrite(runtime, big_config(20, free_port()))
    assert asyncio.run(runtime.reload()) is True
    assert gc.get_freeze_count() > 0
