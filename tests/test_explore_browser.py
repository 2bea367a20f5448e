"""``advlens explore`` in a real browser (Playwright driving the system Chromium): run an attack on a
thumbnail, move the strength and layer sliders, upload an image; no console error and no CSP violation."""
from __future__ import annotations

import os
import shutil
import socket
import threading
import time
import urllib.request

import pytest

sync_api = pytest.importorskip("playwright.sync_api", reason="playwright is not installed")

IDLE = ("() => !document.getElementById('run').disabled && document.getElementById('progress').hidden"
        " && !!document.getElementById('map-adversarial').getAttribute('src')")


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _serve(app):
    """Serve ``app`` with uvicorn in a background thread; yield its URL, stop it afterwards."""
    uvicorn = pytest.importorskip("uvicorn")
    port = _free_port()
    server = uvicorn.Server(uvicorn.Config(app, host="127.0.0.1", port=port, log_level="warning"))
    thread = threading.Thread(target=server.run, daemon=True)
    thread.start()
    url = f"http://127.0.0.1:{port}"
    deadline = time.monotonic() + 30
    while True:
        try:
            with urllib.request.urlopen(f"{url}/api/health", timeout=2) as resp:
                if resp.status == 200:
                    break
        except OSError:
            if time.monotonic() > deadline or not thread.is_alive():
                pytest.fail("the explorer did not answer /api/health within 30 s")
            time.sleep(0.1)
    yield url
    server.should_exit = True
    thread.join(timeout=10)


@pytest.fixture(scope="module")
def explore_url(digits_model):
    """The explorer in live mode (small VGG on digits)."""
    from advlens.explore import create_app

    yield from _serve(create_app(model="small_vgg_digits", images="digits"))


@pytest.fixture(scope="module")
def study_url(tiny_study):
    """The explorer in study mode over a two-image layer-shift study (FGSM, one strength)."""
    from advlens.explore import create_app

    yield from _serve(create_app(run_dir=tiny_study))


@pytest.fixture(scope="module")
def browser():
    exe = shutil.which("chromium")
    if exe is None:
        pytest.skip("chromium is not on PATH")
    with sync_api.sync_playwright() as p:
        try:
            b = p.chromium.launch(executable_path=exe, args=["--no-sandbox"], headless=True)
        except Exception as err:  # noqa: BLE001 - any launch failure means "no usable browser here"
            pytest.skip(f"chromium did not launch: {err}")
        yield b
        b.close()


@pytest.fixture
def page(browser):
    """A 1280x900 page that records console errors, page errors and CSP violations."""
    pg = browser.new_page(viewport={"width": 1280, "height": 900})
    pg.errors = []  # type: ignore[attr-defined]
    pg.on("console", lambda m: pg.errors.append(f"{m.text} ({m.location.get('url')})") if m.type == "error"
          or "Content Security Policy" in m.text else None)
    pg.on("pageerror", lambda e: pg.errors.append(f"pageerror: {e}"))
    pg.set_default_timeout(45_000)
    yield pg
    pg.close()


def _run(page, action) -> tuple[dict, dict]:
    """Do ``action`` (which starts a run), wait for the page to render it; return (request, response)."""
    with page.expect_response(lambda r: r.url.endswith("/api/run")) as info:
        action()
    resp = info.value
    assert resp.status == 200, resp.text()
    page.wait_for_function(IDLE)
    return resp.request.post_data_json, resp.json()


def _points(page) -> list[tuple[str, str, str, bool]]:
    """(series, layer index, cy, compromised) of every point of the cosine chart."""
    return page.eval_on_selector_all(
        "#curve circle.pt", "cs => cs.map(c => [c.dataset.series, c.dataset.layer, c.getAttribute('cy'),"
        " c.classList.contains('compromised')])")


def _check_render(page, res: dict) -> None:
    """The DOM shows ``res`` (a /api/run response): one point per layer and series, lower cosine = lower
    point, red dots exactly on the compromised layers, the selected layer's maps in #maps."""
    layers = res["layers"]
    pts = _points(page)
    assert len(pts) == 2 * len(layers)
    for series in ("adversarial", "noise"):
        mine = [p for p in pts if p[0] == series]
        assert [int(p[1]) for p in mine] == list(range(len(layers)))
        cos = [res["cosine"][series][name] for name in layers]
        cy = [float(p[2]) for p in mine]
        for i in range(len(layers)):
            for j in range(len(layers)):
                if cos[i] < cos[j] - 1e-6:  # SVG y grows downwards
                    assert cy[i] > cy[j]
    red = {layers[int(p[1])] for p in pts if p[3]}
    assert red == set(res["compromised"])
    sel = int(page.input_value("#layer"))
    assert page.get_attribute("#layer", "max") == str(len(layers) - 1)
    for cond in ("clean", "adversarial", "noise"):
        assert page.get_attribute(f"#map-{cond}", "src") == res["maps"][cond][layers[sel]]
        assert page.locator(f"#labels-{cond} li").count() == len(res["labels"][cond])
    assert page.locator("#strips img.selected").count() == 3
    comp = ", ".join(res["compromised"]) if res["compromised"] else "none"
    assert f"K = {res['k']} noise draws; compromised: {comp}" in page.text_content("#summary")


def _no_errors(page) -> None:
    assert page.is_hidden("#error"), page.text_content("#error")
    assert page.errors == [], page.errors


def test_live_run_strength_and_layer(page, explore_url, tmp_path):
    page.goto(explore_url)
    page.wait_for_selector("#thumbs .thumb")
    page.click("#thumbs .thumb >> nth=0")
    assert "selected" in page.get_attribute("#thumbs .thumb >> nth=0", "class")
    page.select_option("#attack", "pgd")
    page.fill("#eps", "0.1")
    page.fill("#steps", "5")
    page.select_option("#method", "gradcam")
    stops = page.evaluate("fetch('/api/options').then(r => r.json()).then(o => o.strengths)")
    first = int(page.input_value("#strength"))
    assert page.text_content("#strength-label") == f"{stops[first]:g}×"

    req, res = _run(page, lambda: page.click("#run"))
    assert req["attack"] == {"method": "pgd", "eps": 0.1, "steps": 5}
    assert req["method"] == "gradcam" and req["source"] == "digits" and req["index"] == 0
    assert req["strength"] == stops[first] and "image" not in req
    _check_render(page, res)
    adv_src, pts = page.get_attribute("#map-adversarial", "src"), _points(page)

    # another strength stop re-runs by itself (debounced) and changes the maps and the curve
    last = len(stops) - 1 if first != len(stops) - 1 else 0
    req, res = _run(page, lambda: page.fill("#strength", str(last)))
    assert req["strength"] == stops[last]
    assert page.text_content("#strength-label") == f"{stops[last]:g}×"
    _check_render(page, res)
    assert page.get_attribute("#map-adversarial", "src") != adv_src
    assert _points(page) != pts

    # the layer slider swaps the big maps and the label, without a request
    label, adv_src = page.text_content("#layer-label"), page.get_attribute("#map-adversarial", "src")
    target = len(res["layers"]) - 1 if int(page.input_value("#layer")) == 0 else 0
    page.fill("#layer", str(target))
    assert page.text_content("#layer-label") != label
    assert res["layers"][target] in page.text_content("#layer-label")
    assert page.get_attribute("#map-adversarial", "src") == res["maps"]["adversarial"][res["layers"][target]]
    assert page.get_attribute("#map-adversarial", "src") != adv_src
    assert page.get_attribute(f"#curve circle.pt[data-layer='{target}']", "data-layer") == str(target)

    # a click on a chart point selects its layer
    page.click("#curve circle.pt[data-series='noise'][data-layer='1']")
    assert page.input_value("#layer") == "1"
    assert page.get_attribute("#map-noise", "src") == res["maps"]["noise"][res["layers"][1]]

    # back to the first stop: the same curve again, answered from the server's cache
    req, res = _run(page, lambda: page.fill("#strength", str(first)))
    assert req["strength"] == stops[first] and res["cached"] is True
    assert "cached" in page.text_content("#summary")
    assert _points(page) == pts
    _check_render(page, res)

    shot = tmp_path / "explore.png"
    page.screenshot(path=str(shot), full_page=True)
    assert shot.stat().st_size > 10_000
    if os.environ.get("ADVLENS_SCREENSHOT"):
        shutil.copyfile(shot, os.environ["ADVLENS_SCREENSHOT"])
    _no_errors(page)


def test_live_upload(page, explore_url, tmp_path):
    from PIL import Image, ImageDraw

    path = tmp_path / "seven.png"
    img = Image.new("RGB", (32, 32), "black")
    ImageDraw.Draw(img).line([(8, 6), (24, 6), (14, 28)], fill="white", width=4)
    img.save(path)
    page.goto(explore_url)
    page.wait_for_selector("#thumbs .thumb")
    page.set_input_files("#upload", str(path))
    req, res = _run(page, lambda: page.click("#run"))
    assert req["image"].startswith("data:image/png;base64,") and "index" not in req
    assert page.locator("#thumbs .thumb.selected").count() == 0
    assert page.get_attribute("#img-clean", "src").startswith("data:image/")
    _check_render(page, res)
    _no_errors(page)

    # an API error goes to the banner and the page stays usable
    page.fill("#eps", "-1")
    with page.expect_response(lambda r: r.url.endswith("/api/run")) as info:
        page.click("#run")
    assert info.value.status >= 400 and "eps" in info.value.json()["error"]
    page.wait_for_selector("#error", state="visible")
    assert page.text_content("#error") == info.value.json()["error"]
    page.wait_for_function("() => !document.getElementById('run').disabled")
    assert page.errors and all(f"status of {info.value.status}" in e for e in page.errors)


def test_study_filters_table_curve_and_maps(page, study_url):
    page.goto(study_url)
    page.wait_for_selector("#study-table tbody tr")
    summary = page.evaluate("fetch('/api/study').then(r => r.json())")
    assert page.locator("#study-table tbody tr").count() == min(200, summary["rows"])
    n_layers = len(summary["layer_order"])
    assert page.locator("#study-curve circle.pt").count() == 2 * n_layers  # adversarial + noise per layer

    cols = page.eval_on_selector_all("#study-table th", "ths => ths.map(t => t.textContent)")
    image = summary["filters"]["image"][1]
    with page.expect_response(lambda r: "/api/study/results" in r.url and f"image={image}" in r.url):
        page.select_option("#filter-image", image)
    page.wait_for_function("([img, j]) => [...document.querySelectorAll('#study-table tbody tr')]"
                           ".every(tr => tr.children[j].textContent === img)", arg=[image, cols.index("image")])
    rows = page.locator("#study-table tbody tr")
    assert rows.count() == 2 * n_layers  # one row per condition and layer for one image at one strength

    # a table row opens that image's maps at that row's layer
    layer = rows.nth(2).locator("td").nth(cols.index("layer")).text_content()
    with page.expect_response(lambda r: r.url.endswith("/api/study/maps")) as info:
        rows.nth(2).click()
    assert info.value.request.post_data_json["image"] == image
    res = info.value.json()
    page.wait_for_function("() => !!document.getElementById('map-adversarial').getAttribute('src')")
    assert page.text_content("#layer-label").startswith(f"{res['layers'].index(layer)}: {layer}")
    assert page.get_attribute("#map-adversarial", "src") == res["maps"]["adversarial"][layer]
    _check_render(page, res)
    _no_errors(page)
