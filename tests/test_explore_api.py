"""The explorer's HTTP API in-process (FastAPI's test client): what /api/run computes equals the library's
seed-000 comparison done image by image; results are cached; every bad request is a 4xx with one line;
study mode filters, plots, recomputes maps and never serves a file outside its folder."""
from __future__ import annotations

import base64
import io

import numpy as np
import pytest
import torch
from PIL import Image

import advlens as al
from advlens import metrics

pytest.importorskip("fastapi")
from fastapi.testclient import TestClient  # noqa: E402

from advlens.explore import create_app  # noqa: E402

RUN = {"model": "small_vgg_digits", "source": "digits", "index": 3, "attack": {"method": "pgd", "eps": 0.1, "steps": 5},
       "strength": 1.0, "method": "gradcam", "k": 4, "seed": 0}


@pytest.fixture(scope="module")
def client(digits_model):
    return TestClient(create_app(model="small_vgg_digits", images="digits"))


def _png(url: str) -> np.ndarray:
    assert url.startswith("data:image/png;base64,")
    return np.asarray(Image.open(io.BytesIO(base64.b64decode(url.split(",", 1)[1]))))


def test_health_options_and_page(client):
    assert client.get("/api/health").json()["status"] == "ok"
    o = client.get("/api/options").json()
    assert o["mode"] == "live" and o["models"][0] == "small_vgg_digits" and o["sources"][0] == "digits"
    assert {a["name"] for a in o["attacks"]} == set(al.list_attacks())
    assert {"gradcam", "layercam", "cam", "saliency", "lrp"} <= {m["name"] for m in o["explainers"]}
    page = client.get("/")
    assert page.status_code == 200 and "<script" in page.text and "<script>" not in page.text  # no inline script
    csp = page.headers["content-security-policy"]
    assert "script-src 'self'" in csp and "default-src 'self'" in csp and "unsafe-inline" not in csp
    assert client.get("/api/health").headers["content-security-policy"] == csp


def test_run_equals_the_library_image_by_image(client, digits_model):
    r = client.post("/api/run", json=RUN)
    assert r.status_code == 200, r.text
    out = r.json()
    model = digits_model
    assert out["layers"] == list(model.layers) and out["k"] == 4 and not out["cached"]
    x = al.load_images("digits", size=model.input_size).x[3:4]
    res = al.attack(model, x, None, "pgd", eps=0.1, steps=5)
    clean = al.explain(model, x, "gradcam", normalize=False)
    adv = al.explain(model, x + (res.x_adv - x), "gradcam", normalize=False)
    noise = [al.explain(model, al.matched_noise(x, res.x_adv, 1.0, seed=j), "gradcam", normalize=False) for j in range(4)]
    for layer in model.layers:
        d_a = float(metrics.cosine(clean[layer], adv[layer]))
        d_g = [float(metrics.cosine(clean[layer], n[layer])) for n in noise]
        assert out["cosine"]["adversarial"][layer] == pytest.approx(d_a, abs=1e-4)
        assert out["threshold"][layer] == pytest.approx(float(np.median(d_g)), abs=1e-4)
        assert (layer in out["compromised"]) == (d_a < np.median(d_g))
    probs = torch.softmax(model(x), 1)[0]
    assert out["labels"]["clean"][0]["label"] == model.labels[int(probs.argmax())]
    assert out["attack_success"] == bool(res.success[0])
    for cond in ("clean", "adversarial", "noise"):
        assert set(out["maps"][cond]) == set(model.layers)
        assert _png(out["maps"][cond]["block3_conv2"]).shape == (32, 32, 3)
    assert _png(out["images"]["perturbation"]).shape == (32, 32, 3)


def test_repeats_are_cached_and_the_strength_moves_the_maps(client):
    first = client.post("/api/run", json=RUN).json()
    again = client.post("/api/run", json=RUN).json()
    assert again["cached"] and again["maps"] == first["maps"] and again["time_s"] < 0.05
    stronger = client.post("/api/run", json={**RUN, "strength": 4.0}).json()
    assert stronger["strength"] == 4.0 and stronger["maps"]["adversarial"] != first["maps"]["adversarial"]
    assert stronger["maps"]["clean"] == first["maps"]["clean"]  # same image, same attack (cached), other strength
    assert client.get("/api/status").json() == {"busy": False, "stage": None, "queued": 0}


def test_uploaded_image_and_thumbnails(client):
    thumbs = client.get("/api/images", params={"limit": 3}).json()
    assert thumbs["count"] == 1797 and [t["index"] for t in thumbs["images"]] == [0, 1, 2]
    buf = io.BytesIO()
    Image.fromarray(np.random.default_rng(0).integers(0, 256, (40, 30, 3), dtype=np.uint8)).save(buf, format="PNG")
    url = "data:image/png;base64," + base64.b64encode(buf.getvalue()).decode()
    r = client.post("/api/run", json={**{k: v for k, v in RUN.items() if k not in ("source", "index")}, "image": url})
    assert r.status_code == 200, r.text
    assert r.json()["layers"] == list(client.app.state.session.model("small_vgg_digits").layers)


def _big_png(w: int, h: int) -> str:
    buf = io.BytesIO()
    Image.new("L", (w, h)).save(buf, format="PNG")
    return base64.b64encode(buf.getvalue()).decode()


@pytest.mark.parametrize("body, status, words", [
    ({"model": "nope"}, 400, "unknown model 'nope'"),
    ({"attack": {"method": "nope"}}, 400, "unknown attack 'nope'"),
    ({"method": "rts"}, 400, "unknown explainer 'rts'"),
    ({"layers": ["nope"]}, 400, "unknown layer"),
    ({"source": "nope"}, 400, "unknown image source 'nope'"),
    ({"attack": {"method": "pgd", "eps": 0}}, 422, "attack.eps"),
    ({"strength": "x"}, 422, "strength"),
    ({"k": 0}, 422, "k:"),
    ({"extra": 1}, 422, "extra"),
    ({"index": 5000}, 404, "out of range"),
    ({"image": "not base64!"}, 415, "not base64"),
    ({"image": base64.b64encode(b"hello, not an image").decode()}, 415, "not an image"),
    ({"image": _big_png(8000, 6000)}, 413, "megapixels"),
])
def test_bad_requests_are_one_line_4xx(client, body, status, words):
    r = client.post("/api/run", json={**RUN, **body})
    assert r.status_code == status, r.text
    err = r.json()["error"]
    assert words in err and "\n" not in err and "Traceback" not in err


def test_too_large_upload_is_413_before_reading(client):
    r = client.post("/api/run", content=b"x" * (15 * 2**20), headers={"content-type": "application/json"})
    assert r.status_code == 413 and "larger than 10 MB" in r.json()["error"]
    assert client.get("/api/nope").status_code == 404 and "error" in client.get("/api/nope").json()


def test_study_mode_filters_plots_and_maps(tiny_study):
    c = TestClient(create_app(run_dir=tiny_study))
    assert c.get("/api/options").json()["mode"] == "study"
    s = c.get("/api/study").json()
    assert s["study"] == "layer_shift" and s["filters"]["condition"] == ["adversarial", "noise"]
    assert s["layer_order"][0] == "block1_conv1" and len(s["filters"]["image"]) == 2
    image = s["filters"]["image"][0]
    rows = c.get("/api/study/results", params={"image": image, "condition": "adversarial", "limit": 100}).json()
    assert rows["total"] == 6 and all(r[rows["columns"].index("image")] == image for r in rows["rows"])
    curve = c.get("/api/study/curve", params={"image": image}).json()
    cos = dict(zip(rows["columns"], zip(*rows["rows"])))["cosine"]
    assert curve["series"]["adversarial"] == pytest.approx(list(cos))  # one row per layer: the mean is the value
    maps = c.post("/api/study/maps", json={"image": image, "strength": 1.0, "explainer": "gradcam"}).json()
    assert maps["layers"] == s["layer_order"] and set(maps["maps"]) == {"clean", "adversarial", "noise"}
    assert c.post("/api/study/maps", json={"image": "nope"}).status_code == 404
    assert c.get("/api/study/file", params={"path": "report.html"}).status_code == 200
    for bad, status in (("../study/../../etc/passwd", 403), ("/etc/passwd", 403), ("nope.txt", 404)):
        r = c.get("/api/study/file", params={"path": bad})
        assert r.status_code == status and "error" in r.json()
    assert c.get("/api/study/curve", params={"metric": "nope"}).status_code == 400


def test_cli_refuses_a_busy_port_and_a_folder_that_is_no_study(tmp_path, capsys):
    import socket

    from advlens.cli import main

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
        assert main(["explore", "--no-browser", "--port", str(port)]) == 2
    assert f"--port {port}" in capsys.readouterr().err
    code = main(["explore", str(tmp_path / "none"), "--no-browser", "--port", str(port)])
    err = capsys.readouterr().err
    assert code == 2 and len(err.strip().splitlines()) == 1
