"""A bounded load test of ``cotune serve`` on loopback: 8 concurrent clients x 20 requests (mixed
streamed / not, text / image), stopped by itself. No request fails, every answer equals the one a
lone client gets, resident memory grows by less than RSS_BOUND_MB, and the latency percentiles
are printed."""

from __future__ import annotations

import gc
import os
import statistics
import threading
import time
from concurrent.futures import ThreadPoolExecutor

import pytest

pytest.importorskip("fastapi")
httpx = pytest.importorskip("httpx")

from cotune.serve import ServeConfig, load_service  # noqa: E402
from cotune.serve.server import BackgroundServer  # noqa: E402
from test_serve_api import image_part, one_torch_thread, serve_run, stream_text, user, write_media  # noqa: E402, F401 (autouse fixture)

CLIENTS, REQUESTS = 8, 20
#: Largest growth of the process's resident memory over the load (after a warm-up of the same mix).
RSS_BOUND_MB = 40


def rss_mb() -> float:
    with open("/proc/self/statm") as statm:
        return int(statm.read().split()[1]) * os.sysconf("SC_PAGE_SIZE") / 2**20


def percentile(values: list[float], q: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, round(q / 100 * (len(ordered) - 1)))]


@pytest.mark.skipif(not os.path.exists("/proc/self/statm"), reason="resident memory is read from /proc (Linux)")
def test_concurrent_clients_all_succeed_with_bounded_memory(tiny_root, tmp_path_factory, capsys):
    work = tmp_path_factory.mktemp("serve-load")
    run, media = serve_run(tiny_root), write_media(work / "media")
    bodies = [{**user("what colour is the shape"), "max_tokens": 3},
              {**user("what colour", image_part(media / "red.png")), "max_tokens": 3}]
    service = load_service(run, ServeConfig(queue_timeout=60), device="cpu")
    with BackgroundServer(service) as url, httpx.Client(base_url=url, timeout=60) as solo:
        expected = [solo.post("/v1/chat/completions", json=b).json()["choices"][0]["message"]["content"] for b in bodies]
        local, clients = threading.local(), []

        def one(i: int) -> tuple[bool, float]:
            if not hasattr(local, "client"):  # one connection per client thread, kept alive
                local.client = httpx.Client(base_url=url, timeout=60)
                clients.append(local.client)
            client = local.client
            body, streamed = bodies[i % 2], (i // 2) % 2 == 1
            start = time.perf_counter()
            try:
                if streamed:
                    text = stream_text(client, body)[0]
                else:
                    response = client.post("/v1/chat/completions", json=body)
                    text = response.json()["choices"][0]["message"]["content"] if response.status_code == 200 else None
            except Exception:  # noqa: BLE001 - counted as a failure
                text = None
            return text == expected[i % 2], time.perf_counter() - start

        with ThreadPoolExecutor(CLIENTS) as pool:
            list(pool.map(one, range(2 * CLIENTS)))  # warm-up: threads, connections, allocator pools
            gc.collect()
            before = rss_mb()
            start = time.perf_counter()
            results = list(pool.map(one, range(CLIENTS * REQUESTS)))
            seconds = time.perf_counter() - start
        gc.collect()
        growth = rss_mb() - before
        for client in clients:
            client.close()
        assert solo.get("/health").json() == {"status": "ok", "model": "tiny-run", "waiting": 0, "busy": False,
                                              "completed": 2 + 2 * CLIENTS + CLIENTS * REQUESTS}
    latencies = [1000 * s for _ok, s in results]
    failures = sum(not ok for ok, _s in results)
    with capsys.disabled():
        print(f"\nserve load: {CLIENTS} clients x {REQUESTS} requests in {seconds:.2f} s ({len(results) / seconds:.1f} req/s); "
              f"latency ms p50 {percentile(latencies, 50):.1f} p95 {percentile(latencies, 95):.1f} "
              f"p99 {percentile(latencies, 99):.1f} max {max(latencies):.1f} (mean {statistics.mean(latencies):.1f}); "
              f"failed {failures}; RSS {before:.0f} MB -> {before + growth:.0f} MB ({growth:+.1f} MB, bound {RSS_BOUND_MB} MB)")
    assert failures == 0
    assert growth < RSS_BOUND_MB
