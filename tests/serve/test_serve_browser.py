"""The web chat page in a real browser: headless Chromium (the system's, driven by Playwright)
opens ``cotune serve --ui``, shows the run's name and trainable parameter count, sends a message
with an uploaded image, and the streamed answer appears, equal to the API's answer; a second turn
carries the history, and Reset clears it. Skipped, with the reason, where Playwright or Chromium is
missing (CI installs Debian's ``chromium`` first)."""

from __future__ import annotations

import os
import shutil

import pytest

pytest.importorskip("fastapi")
httpx = pytest.importorskip("httpx")
sync_api = pytest.importorskip("playwright.sync_api", reason="playwright is not installed (pip install playwright)")

from cotune.serve import ServeConfig, load_service  # noqa: E402
from cotune.serve.server import BackgroundServer  # noqa: E402
from cotune.testing.serve import image_part, serve_run, user, write_media  # noqa: E402

pytestmark = pytest.mark.usefixtures("one_torch_thread")  # tests/conftest.py

CHROMIUM = os.environ.get("COTUNE_TEST_CHROMIUM") or shutil.which("chromium") or shutil.which("chromium-browser")


@pytest.mark.skipif(CHROMIUM is None, reason="no Chromium found (apt-get install chromium); the browser test needs one")
def test_ui_streams_an_answer_about_an_uploaded_image(tiny_root, tmp_path_factory):
    work = tmp_path_factory.mktemp("serve-ui")
    run, media = serve_run(tiny_root), write_media(work / "media")
    service = load_service(run, ServeConfig(max_tokens=12), device="cpu")
    with BackgroundServer(service, ui=True) as url, httpx.Client(base_url=url, timeout=60) as api:
        expected = api.post("/v1/chat/completions", json=user("what colour", image_part(media / "red.png"))).json()
        expected = expected["choices"][0]["message"]["content"]
        with sync_api.sync_playwright() as playwright:
            browser = playwright.chromium.launch(executable_path=CHROMIUM, headless=True, args=["--no-sandbox"])
            try:
                page = browser.new_page()
                page.goto(url + "/")
                page.wait_for_function("document.getElementById('meta').textContent.includes('trainable')")
                assert page.text_content("#name") == "tiny-run"
                assert page.text_content("#meta").startswith(f"{service.trainable_params:,} trainable parameters")
                page.set_input_files("#image", str(media / "red.png"))
                page.wait_for_function("document.getElementById('attached').textContent.includes('red.png')")
                # mutation records, not observer calls: the calls of one task are batched, and a fast server's
                # pieces can all arrive in one read
                page.evaluate("window.updates = 0; new MutationObserver((records) => { window.updates += records.length; })"
                              ".observe(document.getElementById('log'), {subtree: true, childList: true, characterData: true})")
                page.fill("#text", "what colour")
                page.click("#send")
                page.wait_for_selector(".assistant[data-state=done]", timeout=30_000)
                assert page.evaluate("window.updates") >= 4  # bubbles added, then the answer grew piece by piece
                assert page.locator(".user img").count() == 1
                assert page.text_content(".assistant") == expected and expected
                completed = service.engine.completed
                page.fill("#text", "and the shape")
                page.keyboard.press("Enter")
                page.wait_for_selector(".assistant:nth-of-type(4)[data-state=done]", timeout=30_000)
                assert page.locator(".assistant").count() == 2 and service.engine.completed == completed + 1
                assert page.evaluate("state.history.map((m) => m.role)") == ["user", "assistant", "user", "assistant"]
                assert not page.locator(".error").count()
                page.click("#reset")
                assert page.locator(".msg").count() == 0
            finally:
                browser.close()


@pytest.mark.skipif(CHROMIUM is None, reason="no Chromium found (apt-get install chromium); the browser test needs one")
def test_ui_of_a_keyed_server_asks_the_browser_for_the_key(tiny_root):
    """With --api-key the page and the API it calls need the key: the 401 carries a Basic challenge
    the browser acts on (a browser with no password would ask for one), a wrong password is refused;
    the key as the HTTP Basic password (what the login prompt sends) loads the page, and the page's
    own fetch calls carry the same credentials, so the chat works. (Chromium ignores a Basic
    challenge that follows another in the same header: the server sends one challenge per header.)"""
    key = "browser-key-123"
    service = load_service(serve_run(tiny_root), ServeConfig(max_tokens=6, api_keys=(key,)), device="cpu")
    with BackgroundServer(service, ui=True) as url, httpx.Client(base_url=url, timeout=60) as api:
        expected = api.post("/v1/chat/completions", json=user("hello"), headers={"Authorization": f"Bearer {key}"})
        expected = expected.json()["choices"][0]["message"]["content"]
        with sync_api.sync_playwright() as playwright:
            browser = playwright.chromium.launch(executable_path=CHROMIUM, headless=True, args=["--no-sandbox"])
            try:
                # no credentials: the browser met a Basic challenge it could answer only by asking
                # the user, which headless Playwright reports as an error
                stranger = browser.new_context()
                with pytest.raises(sync_api.Error, match="ERR_INVALID_AUTH_CREDENTIALS"):
                    stranger.new_page().goto(url + "/")
                stranger.close()
                stranger = browser.new_context(http_credentials={"username": "me", "password": "wrong"})
                assert stranger.new_page().goto(url + "/").status == 401  # answered the challenge, refused
                stranger.close()
                context = browser.new_context(http_credentials={"username": "me", "password": key})
                page = context.new_page()
                assert page.goto(url + "/").status == 200
                page.wait_for_function("document.getElementById('meta').textContent.includes('trainable')")
                page.fill("#text", "hello")
                page.click("#send")
                page.wait_for_selector(".assistant[data-state=done]", timeout=30_000)
                assert page.text_content(".assistant") == expected and expected
                assert not page.locator(".error").count()
            finally:
                browser.close()
