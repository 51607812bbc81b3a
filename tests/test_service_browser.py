"""The service's page in a real browser: headless Chromium (Debian's package) driven by Playwright.

Loads the page of a small built collection, uploads a copy of an indexed clip, checks that the
original is ranked first with its matched segment marked on the timeline, opens the side-by-side
view (both videos decode and seek to the segment) and saves a screenshot as a test artifact
($DNS_JAX_TEST_ARTIFACTS/service.png; $DNS_JAX_SERVICE_SCREENSHOT, if set, gets a copy too).
"""
import os
import shutil
import threading
import time

import pytest

pytest.importorskip("fastapi")
pytest.importorskip("uvicorn")

from service_fixtures import artifacts_dir, copy_workdir, free_port  # noqa: E402

pytestmark = pytest.mark.slow

CHROMIUM_NAMES = ("chromium", "chromium-browser", "google-chrome", "google-chrome-stable")


def _chromium():
    """The browser's path; skip the module (before the collection is built) when there is none."""
    try:
        import playwright.sync_api  # noqa: F401
    except ImportError:
        pytest.skip("browser tests skipped: the playwright package is not installed (pip install playwright)",
                    allow_module_level=True)
    for name in CHROMIUM_NAMES:
        path = shutil.which(name)
        if path:
            return path
    pytest.skip("browser tests skipped: no Chromium executable on PATH (Debian: apt-get install chromium)",
                allow_module_level=True)


CHROMIUM = _chromium()


@pytest.fixture(scope="module")
def served(service_collection, tmp_path_factory):
    """The service on 127.0.0.1 in a thread of this process (uvicorn, as `dns-jax serve` runs it)."""
    import uvicorn
    from dns_jax.service.app import Settings, create_app
    from dns_jax.service.collection import Collection
    work = copy_workdir(service_collection, tmp_path_factory.mktemp("browser") / "work")
    collection = Collection(work)
    collection.warm_up()               # as `dns-jax serve` does: the page then shows warm search times
    app = create_app(collection, Settings(), log=lambda *_: None)
    port = free_port()
    server = uvicorn.Server(uvicorn.Config(app, host="127.0.0.1", port=port, log_level="warning"))
    thread = threading.Thread(target=server.run, daemon=True)
    thread.start()
    t0 = time.time()
    while not server.started:
        assert time.time() - t0 < 60 and thread.is_alive(), "the server did not start"
        time.sleep(0.05)
    yield f"http://127.0.0.1:{port}"
    server.should_exit = True
    thread.join(30)


@pytest.fixture(scope="module")
def browser():
    executable = CHROMIUM
    from playwright.sync_api import Error, sync_playwright
    with sync_playwright() as p:
        try:
            b = p.chromium.launch(executable_path=executable, args=["--no-sandbox", "--disable-gpu"])
        except Error as e:
            pytest.skip(f"browser tests skipped: Chromium at {executable} does not start: {e}")
        yield b
        b.close()


def test_upload_a_copy_see_the_original_first_and_compare(browser, served, service_collection, tmp_path,
                                                          tmp_path_factory):
    from playwright.sync_api import expect
    original = service_collection.info.queries[0]
    copy = tmp_path / "my copy.mp4"
    shutil.copy(service_collection.videos / f"{original}.mp4", copy)

    page = browser.new_page(viewport={"width": 1100, "height": 900})
    errors = []
    page.on("pageerror", lambda e: errors.append(str(e)))
    page.goto(served + "/")
    expect(page.locator("#collection-info")).to_have_text(f"{len(service_collection.info.ids)} videos indexed")
    # the indexed videos are offered as queries too
    expect(page.get_by_label("Indexed video").locator("option")).to_have_count(len(service_collection.info.ids) + 1)

    page.get_by_label("Query video file").set_input_files(str(copy))
    page.get_by_label("Stage").select_option("dns")
    page.get_by_label("Budget").fill("0.3")
    page.get_by_label("Number of results").fill("6")
    page.get_by_role("button", name="Search", exact=True).click()

    results = page.get_by_role("list", name="Results")
    first = results.get_by_role("listitem").first
    expect(first).to_have_attribute("aria-label", f"Result 1: {original}", timeout=60_000)
    expect(results.get_by_role("listitem")).to_have_count(6)
    status = page.locator("#search-status")
    expect(status).to_contain_text("results for my copy")
    expect(status).to_contain_text(" ms")                                  # the search time is shown
    assert page.get_by_label("Upload progress").evaluate("e => e.value") == 100
    # the matched segment is marked on the original's timeline
    timeline = first.get_by_role("img", name=f"Matched segments of {original}")
    expect(timeline).to_have_attribute("aria-label", f"Matched segments of {original}: 0 s–5 s")
    seg = timeline.locator(".segment").first
    box, bar = seg.bounding_box(), timeline.bounding_box()
    assert box["width"] > 0.5 * bar["width"]                               # the whole clip matches
    expect(first.get_by_role("img", name=f"Thumbnail of {original}")).to_have_js_property("complete", True)
    assert first.get_by_role("img", name=f"Thumbnail of {original}").evaluate("i => i.naturalWidth") > 0

    # side by side: both videos load and start at the segment
    first.get_by_role("button", name=f"Compare {original} side by side").click()
    view = page.get_by_role("region", name="Side-by-side view")
    expect(view).to_be_visible()
    expect(view).to_have_attribute("data-ready", "true", timeout=30_000)
    for label in ("Query video", "Result video"):
        video = view.get_by_label(label, exact=True)
        page.wait_for_function("v => v.readyState >= 2 && !v.error", arg=video.element_handle(), timeout=30_000)
        assert video.evaluate("v => v.videoWidth") == 128
    expect(view.get_by_role("button", name="Segment 1: query 0–5 s ↔ 0–5 s")).to_have_attribute("aria-pressed", "true")
    page.wait_for_timeout(700)                                               # let the videos paint
    assert not errors, errors

    out = os.path.join(artifacts_dir(tmp_path_factory), "service.png")
    page.screenshot(path=out, full_page=True)
    assert os.path.getsize(out) > 10_000
    if os.environ.get("DNS_JAX_SERVICE_SCREENSHOT"):
        shutil.copy(out, os.environ["DNS_JAX_SERVICE_SCREENSHOT"])
    print(f"screenshot: {out}")
    page.close()


def test_bad_upload_shows_the_reason(browser, served, tmp_path):
    from playwright.sync_api import expect
    bad = tmp_path / "notes.mp4"
    bad.write_bytes(b"not a video\n" * 100)
    page = browser.new_page()
    page.goto(served + "/")
    page.get_by_label("Query video file").set_input_files(str(bad))
    page.get_by_role("button", name="Search", exact=True).click()
    expect(page.locator("#search-status")).to_contain_text("not a readable video")
    expect(page.locator("#search-status")).to_have_class("error")
    page.close()
