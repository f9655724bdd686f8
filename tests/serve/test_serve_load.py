"""A bounded load test of ``cotune serve`` on loopback: 8 concurrent clients x 20 requests (mixed
streamed / not, text / image), stopped by itself. No request fails, every answer equals the one a
lone client gets, resident memory grows by less than RSS_BOUND_MB, and the latency percentiles
and batch sizes are printed. Dynamic batching: requests that wait together are generated in one
batch, each answer equal to ``cotune predict``'s (greedy) or to its own lone answer (seeded
sampling), each row stopping on its own (EOS, stop string, max_tokens), routing weights computed once
per modality row."""

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
from cotune.testing.serve import (  # noqa: E402
    QUESTIONS, audio_part, image_part, predict, serve_run, stream_text, user, write_media,
)

pytestmark = pytest.mark.usefixtures("one_torch_thread")  # tests/conftest.py

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
        assert solo.get("/health").json() == {"status": "ok", "model": "tiny-run", "waiting": 0, "running": 0, "busy": False,
                                              "completed": 2 + 2 * CLIENTS + CLIENTS * REQUESTS}
        batches = service.engine.batches
    latencies = [1000 * s for _ok, s in results]
    failures = sum(not ok for ok, _s in results)
    with capsys.disabled():
        print(f"\nserve load: {CLIENTS} clients x {REQUESTS} requests in {seconds:.2f} s ({len(results) / seconds:.1f} req/s); "
              f"latency ms p50 {percentile(latencies, 50):.1f} p95 {percentile(latencies, 95):.1f} "
              f"p99 {percentile(latencies, 99):.1f} max {max(latencies):.1f} (mean {statistics.mean(latencies):.1f}); "
              f"failed {failures}; RSS {before:.0f} MB -> {before + growth:.0f} MB ({growth:+.1f} MB, bound {RSS_BOUND_MB} MB); "
              f"{batches} batches, largest {service.engine.largest_batch} (max {service.config.max_batch})")
    assert failures == 0
    assert growth < RSS_BOUND_MB


def test_requests_waiting_together_are_batched_and_answered_as_alone(tiny_root, tmp_path_factory, capsys):
    """Seven different requests queue while the model is held, then run as one batch: greedy
    answers equal ``cotune predict``'s, a seeded sampled answer equals its lone answer, and each
    row ends on its own terms (max_tokens 2, a stop string, the default length), streamed or not."""
    work = tmp_path_factory.mktemp("serve-batch")
    run, media = serve_run(tiny_root), write_media(work / "media")
    service = load_service(run, ServeConfig(max_tokens=10, max_batch=8), device="cpu")
    greedy = [("text", QUESTIONS[0], None, None, {}), ("png", QUESTIONS[0], "red.png", None, {"stream": True}),
              ("jpeg", QUESTIONS[1], "blue.jpg", None, {}), ("audio", QUESTIONS[2], None, "tone.wav", {"stream": True}),
              ("both", QUESTIONS[1], "red.png", "tone.flac", {}), ("short", QUESTIONS[1], None, None, {"max_tokens": 2})]
    bodies = {}
    for name, text, image, audio, extra in greedy:
        parts = ([image_part(media / image)] if image else []) + ([audio_part(media / audio)] if audio else [])
        bodies[name] = {**user(text, *parts), **extra}
    bodies["sampled"] = {**user(QUESTIONS[2]), "temperature": 1.2, "top_p": 0.9, "seed": 11}
    expected = {name: predict(capsys, run, text, media / image if image else None, media / audio if audio else None,
                              max_tokens=extra.get("max_tokens", 10)) for name, text, image, audio, extra in greedy}

    def ask(client, body):
        if body.get("stream"):
            return stream_text(client, body)[0]
        response = client.post("/v1/chat/completions", json=body)
        assert response.status_code == 200, response.text
        return response.json()["choices"][0]["message"]["content"]

    with BackgroundServer(service) as url, httpx.Client(base_url=url, timeout=60) as client:
        expected["sampled"] = ask(client, bodies["sampled"])
        full = ask(client, bodies["text"])
        stop = full[3:6]
        assert len(full) > 8 and stop.strip()
        bodies["stopped"] = {**bodies["text"], "stop": stop}
        expected["stopped"] = full[: full.index(stop)].strip()
        engine, batches, answers = service.engine, service.engine.batches, {}

        def one(name):
            with httpx.Client(base_url=url, timeout=60) as own:
                answers[name] = ask(own, bodies[name])

        threads = [threading.Thread(target=one, args=(name,)) for name in bodies]
        with engine.hold():  # the model is busy: every request queues
            for thread in threads:
                thread.start()
            deadline = time.monotonic() + 60
            while engine.waiting < len(bodies):
                assert time.monotonic() < deadline, f"only {engine.waiting} of {len(bodies)} requests queued"
                time.sleep(0.01)
        for thread in threads:
            thread.join(60)
        assert engine.batches == batches + 1 and engine.largest_batch == len(bodies) == 8  # one batch of all eight
    assert answers == expected
    assert all(expected.values()) and len(expected["short"]) < len(expected["text"])
    # routing weights are computed once per modality row (text, image, audio, image+audio), then
    # cached for every batch: the 2 requests before the batch and the 8 in it computed them 4 times
    assert service.engine.routings_computed == 4
