"""``cotune serve`` under attack: API keys, Host and cross-site checks, half-sent requests, clients
that leave, a ``file://`` symlink race, images and audio that would make preprocessing allocate gigabytes
(the server's peak resident memory is measured), and SIGTERM with requests in flight."""

from __future__ import annotations

import base64
import io
import json
import os
import signal
import socket
import subprocess
import sys
import threading
import time

import numpy as np
import pytest
import soundfile
from PIL import Image

pytest.importorskip("fastapi")
httpx = pytest.importorskip("httpx")

from cotune.cli.main import main  # noqa: E402
from cotune.config import ConfigError  # noqa: E402
from cotune.serve import RequestError, ServeConfig, load_service, parse_chat_request  # noqa: E402
from cotune.serve.security import exposure_warning, read_api_keys, resolve_allowed_hosts  # noqa: E402
from cotune.serve.server import BackgroundServer  # noqa: E402
from cotune.testing.serve import audio_part, image_part, serve_run, user, write_media  # noqa: E402

pytestmark = pytest.mark.usefixtures("one_torch_thread")  # tests/conftest.py

KEYS = ("first-key-0123", "second-key-4567")
LONG = 4000  # tokens: the tiny model never ends these prompts early (no EOS in its first 4,000 tokens)


def png_bytes(width: int, height: int) -> bytes:
    buffer = io.BytesIO()
    Image.new("RGB", (width, height), (9, 9, 9)).save(buffer, "PNG")
    return buffer.getvalue()


def data_url(data: bytes) -> dict:
    return {"type": "image_url", "image_url": {"url": f"data:image/png;base64,{base64.b64encode(data).decode()}"}}


def wait_for(condition, what: str, seconds: float = 60) -> None:
    deadline = time.monotonic() + seconds
    while not condition():
        assert time.monotonic() < deadline, f"timed out waiting for {what}"
        time.sleep(0.02)


@pytest.fixture(scope="module")
def run(tiny_root):
    return serve_run(tiny_root)


@pytest.fixture(scope="module")
def keyed(run):
    service = load_service(run, ServeConfig(api_keys=KEYS, max_tokens=4, read_timeout=3.0, max_tokens_limit=LONG), device="cpu")
    with BackgroundServer(service, ui=True) as url:
        yield service, url


def bearer(key: str) -> dict:
    return {"Authorization": f"Bearer {key}"}


def test_a_keyed_server_answers_only_with_a_key_and_health_without(keyed):
    _service, url = keyed
    with httpx.Client(base_url=url, timeout=60) as client:
        assert client.get("/health").status_code == 200
        for headers in ({}, bearer("wrong"), {"Authorization": "Basic " + base64.b64encode(b"u:wrong").decode()},
                        {"Authorization": KEYS[0]}):
            for method, path in (("GET", "/v1/models"), ("POST", "/v1/chat/completions"), ("GET", "/")):
                response = client.request(method, path, headers=headers, json=user("hi"))
                assert response.status_code == 401, (method, path, headers)
                assert response.json()["error"]["code"] == "invalid_api_key"
                # one challenge per header (a browser reads the first of a header only): Basic makes it ask
                assert response.headers.get_list("www-authenticate") == ['Bearer realm="cotune serve"', 'Basic realm="cotune serve"']
        assert client.get("/v1/models", headers=bearer(KEYS[1])).status_code == 200
        basic = {"Authorization": "Basic " + base64.b64encode(f"anyone:{KEYS[0]}".encode()).decode()}
        assert "<title>cotune chat</title>" in client.get("/", headers=basic).text  # the chat page, as a browser sends it
        answer = client.post("/v1/chat/completions", headers=bearer(KEYS[0]), json=user("hi"))
        assert answer.status_code == 200 and answer.json()["choices"][0]["message"]["content"]


def test_every_route_of_a_keyed_server_but_health_needs_the_key(keyed):
    """Every route the app has (the chat page's included), and paths it does not have, get 401
    without a valid key: a client without one learns nothing, not even which paths exist."""
    from cotune.serve.app import create_app

    service, url = keyed
    routes = {(method, route.path) for route in create_app(service, ui=True).routes for method in getattr(route, "methods", ())}
    assert {("GET", "/"), ("GET", "/v1/models"), ("POST", "/v1/chat/completions"), ("GET", "/health")} <= routes, routes
    unknown = {("GET", "/docs"), ("GET", "/openapi.json"), ("POST", "/v1/completions"), ("GET", "/v1/models/tiny-run"),
               ("OPTIONS", "/v1/chat/completions"), ("GET", "/health/")}
    with httpx.Client(base_url=url, timeout=60) as client:
        for method, path in sorted(routes | unknown):
            for headers in ({}, bearer("wrong"), bearer(KEYS[0] + "x"), bearer(KEYS[0][:-1])):
                response = client.request(method, path, headers=headers, json=user("hi") if method == "POST" else None)
                if path == "/health":
                    assert response.status_code == 200 and response.json()["status"] == "ok"
                else:
                    assert response.status_code == 401 and response.json()["error"]["code"] == "invalid_api_key", (method, path)
            if path != "/health" and (method, path) in routes:
                keyed_response = client.request(method, path, headers=bearer(KEYS[1]), json=user("hi") if method == "POST" else None)
                assert keyed_response.status_code == 200, (method, path)


def test_the_openai_client_sends_its_key(keyed):
    openai = pytest.importorskip("openai")
    _service, url = keyed
    good = openai.OpenAI(base_url=f"{url}/v1", api_key=KEYS[1], max_retries=0)
    assert good.chat.completions.create(model="tiny-run", messages=[{"role": "user", "content": "hi"}]).choices[0].message.content
    bad = openai.OpenAI(base_url=f"{url}/v1", api_key="not-the-key", max_retries=0)
    with pytest.raises(openai.AuthenticationError):
        bad.models.list()


def test_dns_rebinding_and_cross_site_posts_are_refused(keyed):
    _service, url = keyed
    port = url.rsplit(":", 1)[1]
    with httpx.Client(base_url=url, timeout=60, headers=bearer(KEYS[0])) as client:
        for host in ("evil.example", f"evil.example:{port}", "127.0.0.1.evil.example"):
            response = client.get("/health", headers={"Host": host})  # a page whose name now points at 127.0.0.1
            assert response.status_code == 400 and response.json()["error"]["code"] == "invalid_host", host
        for host in (f"localhost:{port}", f"127.0.0.1:{port}", "LOCALHOST"):
            assert client.get("/v1/models", headers={"Host": host}).status_code == 200, host
        body = json.dumps(user("hi"))
        for kind in ("text/plain", "application/x-www-form-urlencoded", "multipart/form-data; boundary=x", None):
            headers = {"Content-Type": kind} if kind else {}
            response = client.post("/v1/chat/completions", content=body, headers=headers)  # what a form or no-cors fetch sends
            assert response.status_code == 415 and "must be application/json" in response.json()["error"]["message"], kind
        response = client.post("/v1/chat/completions", json=user("hi"), headers={"Origin": "https://evil.example"})
        assert response.status_code == 403 and response.json()["error"]["code"] == "cross_origin"
        same = client.post("/v1/chat/completions", json=user("hi"), headers={"Origin": url})  # the chat page itself
        assert same.status_code == 200


def test_allowed_hosts_and_the_exposure_warning():
    assert resolve_allowed_hosts(None, "127.0.0.1") == {"localhost", "127.0.0.1", "::1"}
    assert resolve_allowed_hosts(None, "::1") == {"localhost", "127.0.0.1", "::1"}
    assert resolve_allowed_hosts(None, "0.0.0.0") is None
    assert resolve_allowed_hosts(["Example.org", "[::1]"], "0.0.0.0") == {"example.org", "::1"}
    assert resolve_allowed_hosts(["*"], "127.0.0.1") is None
    warning = exposure_warning("0.0.0.0", (), None)
    assert "without an API key: anyone who can reach this port can use the model" in warning and "DNS rebinding" in warning
    assert exposure_warning("0.0.0.0", ("k",), None) is None and exposure_warning("127.0.0.1", (), None) is None
    assert exposure_warning("::", (), None)


def test_listening_beyond_this_machine_without_a_key_warns_before_the_model_loads(tmp_path, capsys, monkeypatch):
    """The warning is logged before loading (the run directory here does not exist, so the command
    stops right after it): no server is started and nothing listens."""
    monkeypatch.delenv("COTUNE_API_KEY", raising=False)
    missing = str(tmp_path / "no-run")
    warning = "WARNING cotune.cli.serve: serving on 0.0.0.0 without an API key: anyone who can reach this port can use the model"
    for argv, warned in ((["--host", "0.0.0.0"], True), (["--host", "0.0.0.0", "--api-key", "k"], False),
                         (["--host", "127.0.0.1"], False), ([], False)):
        assert main(["serve", missing, *argv]) == 2
        err = capsys.readouterr().err
        assert "no such directory" in err
        assert (warning in err) == warned, (argv, err)
    monkeypatch.setenv("COTUNE_API_KEY", "from-the-environment")
    assert main(["serve", missing, "--host", "0.0.0.0"]) == 2
    assert "without an API key" not in capsys.readouterr().err


def test_api_keys_come_from_one_source(tmp_path, capsys, run):
    keys = tmp_path / "keys"
    keys.write_text("# rotated monthly\nfirst\n\n  second  \n")
    assert read_api_keys(None, keys, environ={}) == ("first", "second")
    assert read_api_keys("given", None, environ={"COTUNE_API_KEY": "env"}) == ("given",)
    assert read_api_keys(None, None, environ={"COTUNE_API_KEY": " env "}) == ("env",)
    assert read_api_keys(None, None, environ={}) == ()
    (tmp_path / "empty").write_text("# nothing\n")
    for key, key_file, environ, message in ((None, tmp_path / "empty", {}, "holds no key"),
                                           (None, None, {"COTUNE_API_KEY": " "}, "$COTUNE_API_KEY: holds no key"),
                                           (None, tmp_path / "missing", {}, "--api-key-file: cannot read")):
        with pytest.raises(ConfigError, match=message.replace("$", r"\$")):
            read_api_keys(key, key_file, environ=environ)
    with pytest.raises(ConfigError, match="printable ASCII"):
        ServeConfig(api_keys=("bad key\n",))
    assert main(["serve", str(run), "--api-key", "a", "--api-key-file", str(keys)]) == 2  # refused before loading
    [line] = capsys.readouterr().err.strip().splitlines()
    assert line == "cotune: error: --api-key and --api-key-file exclude each other: give the key one way"
    assert "first" not in repr(ServeConfig(api_keys=("first",)))


def raw_request(url: str, body: bytes, path: str = "/v1/chat/completions", key: str = KEYS[0]) -> socket.socket:
    """A socket that has sent a complete POST (HTTP/1.1, JSON) and nothing else."""
    host, port = url.removeprefix("http://").split(":")
    sock = socket.create_connection((host, int(port)))
    head = (f"POST {path} HTTP/1.1\r\nHost: {host}:{port}\r\nContent-Type: application/json\r\nAuthorization: Bearer {key}\r\n"
            f"Content-Length: {len(body)}\r\n\r\n").encode()
    sock.sendall(head + body)
    return sock


@pytest.mark.parametrize("stream", [False, True], ids=["not-streamed", "streamed"])
def test_a_client_that_leaves_stops_its_generation(keyed, stream):
    service, url = keyed
    engine = service.engine
    completed, cancelled = engine.completed, engine.cancelled
    sock = raw_request(url, json.dumps({**user("what colour is the shape"), "max_tokens": LONG, "stream": stream}).encode())
    wait_for(lambda: engine.running == 1, "the request to start generating")
    time.sleep(0.2)  # a few tokens in
    sock.close()
    wait_for(lambda: engine.running == 0, "the generation to stop")
    assert engine.cancelled == cancelled + 1 and engine.completed == completed  # stopped, not run to max_tokens


def test_half_sent_requests_are_cut_off(keyed):
    """read_timeout is 3 s here (a margin for a loaded machine): headers that never end are closed, bodies that never end get 408."""
    service, url = keyed
    host, port = url.removeprefix("http://").split(":")
    heads, bodies = [], []
    for _ in range(20):
        sock = socket.create_connection((host, int(port)))
        sock.sendall(f"POST /v1/chat/completions HTTP/1.1\r\nHost: {host}:{port}\r\nContent-Ty".encode())
        heads.append(sock)
        sock = socket.create_connection((host, int(port)))
        sock.sendall(f"POST /v1/chat/completions HTTP/1.1\r\nHost: {host}:{port}\r\nContent-Type: application/json\r\n"
                     f"Authorization: Bearer {KEYS[0]}\r\nContent-Length: 1000\r\n\r\n{{\"messages\": ".encode())
        bodies.append(sock)
    for sock in heads + bodies:
        sock.settimeout(30)
    for sock in heads:
        assert sock.recv(65536) == b""  # closed by the server
        sock.close()
    for sock in bodies:
        reply = b""
        while chunk := sock.recv(65536):
            reply += chunk
        sock.close()
        head, _, body = reply.partition(b"\r\n\r\n")
        assert head.startswith(b"HTTP/1.1 408") and b"connection: close" in head.lower()
        assert json.loads(body)["error"]["message"] == "the request body did not arrive within 3 s"
    with httpx.Client(base_url=url, timeout=60, headers=bearer(KEYS[0])) as client:  # still serving
        assert client.post("/v1/chat/completions", json=user("hi")).status_code == 200


def test_file_urls_cannot_escape_the_root_by_swapping_a_folder_for_a_link(tmp_path):
    """A thread swaps ``root/sub`` (holding a PNG) with a link to a folder outside holding a file of
    the same name; every read of ``root/sub/image.png`` must be the PNG or a refusal."""
    root, outside = tmp_path / "root", tmp_path / "outside"
    (root / "sub").mkdir(parents=True)
    outside.mkdir()
    inside = png_bytes(4, 4)
    (root / "sub" / "image.png").write_bytes(inside)
    (outside / "image.png").write_bytes(b"secret, outside the media root")
    config = ServeConfig(media_root=root)
    body = user("x", {"type": "image_url", "image_url": {"url": f"file://{root}/sub/image.png"}})
    stop, swaps = threading.Event(), [0]

    def swap():
        while not stop.is_set():
            os.rename(root / "sub", root / "real")
            os.symlink(outside, root / "sub")
            os.unlink(root / "sub")
            os.rename(root / "real", root / "sub")
            swaps[0] += 1
            # The real folder stays in place a moment: otherwise, on a loaded machine, every read can
            # land while the folder is gone or a link, and the race this test is about never runs.
            stop.wait(0.001)

    swapper = threading.Thread(target=swap)
    swapper.start()
    outcomes = {"read": 0, "refused": 0}
    try:
        # At least 3,000 reads, and on until both outcomes were seen (bounded).
        for attempt in range(30000):
            if attempt >= 3000 and outcomes["read"] and outcomes["refused"]:
                break
            try:
                data = parse_chat_request(body, config, "m").media[0].data
            except RequestError as refusal:
                assert refusal.status in (400, 403) and "secret" not in refusal.message
                outcomes["refused"] += 1
                continue
            assert data == inside, "read a file outside the media root"
            outcomes["read"] += 1
    finally:
        stop.set()
        swapper.join()
    assert outcomes["read"] > 0 and swaps[0] > 0, (outcomes, swaps)


# ------------------------------------------------------------------ a `cotune serve` process


def rss_kb(pid: int, field: str) -> int:
    with open(f"/proc/{pid}/status") as status:
        return int(next(line for line in status if line.startswith(field + ":")).split()[1])


@pytest.fixture(scope="module")
def process(tiny_root, tmp_path_factory):
    """``cotune serve`` in its own process: the chat page, a key file, batches of 2, a 0.5 s
    shutdown grace; the run's Whisper takes a 30 s window, as the real one does (audio is decoded
    up to the window). It imports the core and the serve package, never the HTTP stack, before the
    command runs."""
    run = serve_run(tiny_root, whisper_window=True)
    work = tmp_path_factory.mktemp("serve-process")
    (work / "keys").write_text(KEYS[0] + "\n")
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    env = {**os.environ, "PYTHONPATH": os.pathsep.join(filter(None, ["src", os.environ.get("PYTHONPATH")])), "OMP_NUM_THREADS": "1"}
    script = ("import sys, cotune, cotune.cli.main, cotune.serve\n"
              "assert not {'fastapi', 'uvicorn', 'starlette'} & set(sys.modules), 'the HTTP stack was imported'\n"
              "sys.exit(cotune.cli.main.main(sys.argv[1:]))")
    argv = [sys.executable, "-c", script, "serve", str(run), "--port", str(port), "--ui", "--name", "mine",
            "--api-key-file", str(work / "keys"), "--max-batch", "2", "--shutdown-timeout", "0.5", "--max-tokens-limit", str(LONG),
            "--max-tokens", "4"]
    server = subprocess.Popen(argv, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    url = f"http://127.0.0.1:{port}"
    try:
        wait_for(lambda: server.poll() is not None or _healthy(url), "the server to start", 120)
        assert server.poll() is None, server.communicate()[1][-3000:]
        yield server, url
    finally:
        if server.poll() is None:
            server.kill()
            server.communicate()


def _healthy(url: str) -> bool:
    try:
        return httpx.get(f"{url}/health").status_code == 200
    except httpx.TransportError:
        return False


#: Images of a few hundred bytes at most whose resize would allocate gigabytes on the demo's run
#: (CLIP resizes the short side to 224 px: 8000 x 1 -> 1.8 million x 224 pixels, +5 GB in the issue).
ATTACK_IMAGES = ((8000, 1), (1, 8000), (30_000, 1), (1, 30_000))
#: FLAC clips of 31 s of silence, tens of kB each, at (channels, Hz) beyond the 384,000 samples per
#: second the server decodes: 8 x 192 kHz would decode to 190 MB of float32 within Whisper's 30 s.
ATTACK_AUDIO = ((8, 192_000), (1, 655_350))
#: Largest growth of the server's peak resident memory while it refuses the attacks above.
PEAK_BOUND_MB = 32


def flac_silence(channels: int, rate: int, seconds: int) -> bytes:
    buffer = io.BytesIO()
    with soundfile.SoundFile(buffer, "w", samplerate=rate, channels=channels, format="FLAC", subtype="PCM_16") as sound:
        second = np.zeros((rate, channels), dtype=np.int16)
        for _ in range(seconds):
            sound.write(second)
    return buffer.getvalue()


def audio_data(data: bytes) -> dict:
    return {"type": "input_audio", "input_audio": {"data": base64.b64encode(data).decode(), "format": "flac"}}


@pytest.mark.skipif(not os.path.exists("/proc/self/clear_refs"), reason="peak memory is reset and read through /proc (Linux)")
def test_media_that_would_decode_to_gigabytes_are_refused_within_bounded_memory(process, tmp_path):
    """Issue 21's attack on the served process. This run's CLIP resizes the short side to 30 px, so
    8000 x 1 would become 240,000 x 30 pixels and 30000 x 1 900,000 x 30 (0.3 and 1 GB as float32
    in the image processor); its Whisper takes a 30 s window, so the clips would decode to 190 and
    80 MB of float32. Each is sent 4 times, all at once: every request gets 413 from the header
    checks, and the server's peak resident memory (VmHWM, reset first) grows by less than
    PEAK_BOUND_MB."""
    server, url = process
    attacks = [data_url(png_bytes(w, h)) for w, h in ATTACK_IMAGES]
    attacks += [audio_data(flac_silence(channels, rate, 31)) for channels, rate in ATTACK_AUDIO]
    sizes = [len(part["image_url"]["url"]) if "image_url" in part else len(part["input_audio"]["data"]) for part in attacks]
    assert max(sizes[: len(ATTACK_IMAGES)]) < 400 and max(sizes) < 200_000, sizes  # base64: a few hundred bytes / kB
    with httpx.Client(base_url=url, timeout=120, headers=bearer(KEYS[0])) as client:
        media = write_media(tmp_path / "media")
        for _ in range(2):  # warm-up: threads, allocator pools, an image and a clip through the whole path
            body = user("what colour", image_part(media / "red.png"), audio_part(media / "tone.flac"))
            assert client.post("/v1/chat/completions", json=body).status_code == 200
        with open(f"/proc/{server.pid}/clear_refs", "w") as refs:
            refs.write("5")  # resets the peak (VmHWM) to the current resident size
        before = rss_kb(server.pid, "VmRSS")
        statuses = []

        def attack(part: dict) -> None:
            with httpx.Client(base_url=url, timeout=120, headers=bearer(KEYS[0])) as own:
                response = own.post("/v1/chat/completions", json=user("what is it", part))
                statuses.append((response.status_code, response.json().get("error", {}).get("message", "answered")))

        threads = [threading.Thread(target=attack, args=(part,)) for part in attacks * 4]
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join(120)
        peak = rss_kb(server.pid, "VmHWM")
    growth_mb = (peak - before) / 1024
    messages = {message.split(": ", 1)[-1] for _status, message in statuses}
    print(f"\nmedia attack: {len(statuses)} requests, peak RSS {before / 1024:.0f} MB -> {peak / 1024:.0f} MB ({growth_mb:+.1f} MB)")
    assert len(statuses) == 4 * len(attacks) and all(status == 413 for status, _ in statuses), statuses
    assert "30000x1 pixels, an aspect ratio of 30,000:1; the limit is 20:1" in messages, messages
    assert "192,000 Hz x 8 channels; the limit is 384,000 samples per second over all channels" in messages, messages
    assert growth_mb < PEAK_BOUND_MB


def test_cotune_serve_command_serves_the_api_and_the_page_with_its_key_file(process):
    _server, url = process
    assert httpx.get(f"{url}/health").json()["model"] == "mine"
    assert httpx.get(f"{url}/v1/models").status_code == 401
    assert httpx.get(f"{url}/v1/models", headers=bearer(KEYS[1])).status_code == 401  # not in this server's file
    assert httpx.get(f"{url}/v1/models", headers=bearer(KEYS[0])).json()["data"][0]["id"] == "mine"
    assert "<title>cotune chat</title>" in httpx.get(f"{url}/", auth=("me", KEYS[0])).text
    answer = httpx.post(f"{url}/v1/chat/completions", json={**user("hi"), "model": "mine", "max_tokens": 3}, headers=bearer(KEYS[0]),
                        timeout=60)
    assert answer.status_code == 200 and answer.json()["model"] == "mine"


def test_sigterm_answers_every_accepted_request(process):
    """Two long requests generate together (batches of 2: the first batch's lone request leaves so
    that they start together), four wait; SIGTERM: the waiting ones get the 503 "shutting down"
    error at once, the running ones finish or, after the 0.5 s grace, get it too (a stream as an
    error event, then [DONE]); nothing is cut off or answered with a plain 500; the process exits
    with status 0."""
    server, url = process
    results: dict[int, object] = {}

    def one(i: int) -> None:
        body = {**user("what colour is the shape"), "max_tokens": LONG, "stream": i % 2 == 1}
        with httpx.Client(base_url=url, timeout=120, headers=bearer(KEYS[0])) as client:
            if not body["stream"]:
                response = client.post("/v1/chat/completions", json=body)
                results[i] = (response.status_code, response.headers.get("content-type"), response.text)
                return
            with client.stream("POST", "/v1/chat/completions", json=body) as response:
                if response.status_code != 200:
                    results[i] = (response.status_code, response.headers.get("content-type"), response.read().decode())
                    return
                results[i] = ("stream", [line for line in response.iter_lines() if line])

    health = lambda: httpx.get(f"{url}/health").json()  # noqa: E731
    first = raw_request(url, json.dumps({**user("hi"), "max_tokens": LONG}).encode())
    wait_for(lambda: health()["running"] == 1, "the first request to generate")
    threads = [threading.Thread(target=one, args=(i,)) for i in range(6)]
    for thread in threads[:2]:
        thread.start()
    wait_for(lambda: health()["waiting"] == 2, "two requests to wait")
    first.close()  # it leaves: the two waiting requests start as one batch
    wait_for(lambda: health()["running"] == 2, "two requests to generate together")
    for thread in threads[2:]:
        thread.start()
    wait_for(lambda: health()["waiting"] == 4, "four requests to wait")
    server.send_signal(signal.SIGTERM)
    for thread in threads:
        thread.join(120)
    _out, err = server.communicate(timeout=60)
    assert server.returncode == 0, err[-3000:]
    port = url.rsplit(":", 1)[1]
    assert "serving mine (" in err and f"chat page at http://127.0.0.1:{port}/; 1 API key required" in err and "stopped by SIGTERM" in err
    assert "without an API key" not in err  # loopback and keyed: no warning
    assert "Internal Server Error" not in err and "Traceback" not in err, err[-3000:]
    assert len(results) == 6
    refused = 0
    for i, result in results.items():
        if result[0] == "stream":
            events = result[1]
            assert events[-1] == "data: [DONE]", events[-3:]
            last = json.loads(events[-2][6:])
            if "error" in last:
                assert last["error"] == {"message": "the server is shutting down", "type": "server_busy", "code": "shutting_down"}
                refused += 1
            else:
                assert last["choices"][0]["finish_reason"] == "length"  # finished within the grace
            continue
        status, kind, text = result
        assert kind == "application/json", (i, result)
        if status == 503:
            assert json.loads(text)["error"] == {"message": "the server is shutting down", "type": "server_busy", "param": None,
                                                 "code": "shutting_down"}
            refused += 1
        else:
            assert status == 200 and json.loads(text)["usage"]["completion_tokens"] == LONG, (i, result)
    assert refused >= 4  # at least every waiting request
    with pytest.raises(httpx.TransportError):
        httpx.get(f"{url}/health")
