"""The metrics endpoint when all 16 connections are taken, in-process on a real loop and
real sockets, with the eviction age set so that each outcome is certain: a scrape is
answered while every slot is held, a newcomer with half a head evicts the oldest
exchange once that is old enough, and is refused when none is."""

from __future__ import annotations

import asyncio
import socket
from collections.abc import Callable, Coroutine
from typing import Any

import pytest

from supervisord_batt.daemon import metricshttp
from supervisord_batt.daemon.metricshttp import MAX_CONNECTIONS, MetricsEndpoint


async def until(predicate: Callable[[], Any], timeout: float = 10.0) -> Any:
    deadline = asyncio.get_running_loop().time() + timeout
    while not (value := predicate()):
        assert asyncio.get_running_loop().time() < deadline, "timed out"
        await asyncio.sleep(0.005)
    return value


async def scrape(port: int) -> bytes:
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    writer.write(b"GET /metrics HTTP/1.1\r\n\r\n")
    reply = await asyncio.wait_for(reader.read(), timeout=10)
    writer.close()
    return reply


def closed(s: socket.socket) -> bool:
    try:
        return s.recv(100, socket.MSG_DONTWAIT) == b""
    except BlockingIOError:
        return False


def run(
    scenario: Callable[[MetricsEndpoint, list[tuple[str, str]]], Coroutine[Any, Any, None]],
) -> None:
    async def main() -> None:
        drops: list[tuple[str, str]] = []
        endpoint = MetricsEndpoint(
            ("127.0.0.1", 0),
            lambda: (b"x 1\n", "text/plain; version=0.0.4"),
            on_error=lambda exc: None,
            on_drop=lambda why, peer, age, received: drops.append((why, peer)),
        )
        await endpoint.start()
        try:
            await scenario(endpoint, drops)
        finally:
            await endpoint.close()

    asyncio.run(main())


def fill(endpoint: MetricsEndpoint) -> list[socket.socket]:
    return [socket.create_connection(("127.0.0.1", endpoint.port)) for _ in range(MAX_CONNECTIONS)]


def test_a_newcomer_is_refused_when_no_exchange_is_old_enough(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setattr(metricshttp, "EVICT_AFTER", 3600.0)

    async def scenario(endpoint: MetricsEndpoint, drops: list[tuple[str, str]]) -> None:
        silent = fill(endpoint)
        try:
            await until(lambda: len(endpoint.open) == MAX_CONNECTIONS)
            assert (await scrape(endpoint.port)).startswith(b"HTTP/1.1 200 OK")
            with socket.create_connection(("127.0.0.1", endpoint.port)) as slow:
                slow.sendall(b"GET /met")
                await until(lambda: closed(slow))  # refused after REFUSED_PAUSE
                host, port = slow.getsockname()
                assert drops == [("refused", f"{host}:{port}")]
            assert not any(closed(s) for s in silent)  # none evicted
            # accepting resumed after the pause: scrapes are answered
            assert (await scrape(endpoint.port)).startswith(b"HTTP/1.1 200 OK")
        finally:
            for s in silent:
                s.close()

    run(scenario)


def test_a_newcomer_evicts_the_oldest_exchange_when_old_enough(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setattr(metricshttp, "EVICT_AFTER", 0.0)

    async def scenario(endpoint: MetricsEndpoint, drops: list[tuple[str, str]]) -> None:
        silent = fill(endpoint)
        try:
            await until(lambda: len(endpoint.open) == MAX_CONNECTIONS)
            oldest = next(iter(endpoint.open.values())).peer
            with socket.create_connection(("127.0.0.1", endpoint.port)) as slow:
                slow.sendall(b"GET /met")
                await until(lambda: drops)
                assert drops == [("evicted", oldest)]
                assert not closed(slow) and len(endpoint.open) == MAX_CONNECTIONS
                slow.sendall(b"rics HTTP/1.1\r\n\r\n")  # its head, whole: answered
                await until(lambda: len(endpoint.open) == MAX_CONNECTIONS - 1)
                assert slow.recv(100).startswith(b"HTTP/1.1 200 OK")
            assert sum(closed(s) for s in silent) == 1
        finally:
            for s in silent:
                s.close()

    run(scenario)
