import io
import json
import socket
import threading
import time
import urllib.error
import urllib.request
from concurrent.futures import ThreadPoolExecutor

import numpy as np
import pytest
import torch
from PIL import Image

import cct
from cct.serve import PredictionServer, ServeLimits

LIMITS = ServeLimits(max_upload_bytes=2**20, max_pixels=1_000_000, request_timeout=2.0, max_concurrent=2)
CLASSES = ("airplane", "automobile", "bird", "cat", "deer", "dog", "frog", "horse", "ship", "truck")


def start(model_name):
    torch.manual_seed(0)
    classifier = cct.Classifier(cct.create_model(model_name, class_names=CLASSES))
    server = PredictionServer(("127.0.0.1", 0), classifier, LIMITS)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    return server


@pytest.fixture(scope="module")
def server():
    server = start("cct_keras")
    yield server
    server.shutdown()
    server.server_close()


def request(url, data=None, method=None, headers=None):
    """(status, parsed JSON or text) over real HTTP."""
    req = urllib.request.Request(url, data=data, method=method, headers=headers or {})
    try:
        with urllib.request.urlopen(req, timeout=30) as response:
            body, status, kind = response.read(), response.status, response.headers["Content-Type"]
    except urllib.error.HTTPError as e:
        body, status, kind = e.read(), e.code, e.headers["Content-Type"]
    return status, json.loads(body) if kind == "application/json" else body.decode()


def png_bytes(size=(48, 40), mode="RGB", seed=0):
    pixels = np.random.default_rng(seed).integers(0, 256, (size[1], size[0], 3), dtype=np.uint8)
    buffer = io.BytesIO()
    Image.fromarray(pixels).convert(mode).save(buffer, format="PNG")
    return buffer.getvalue()


def test_page_and_info(server):
    status, page = request(server.url + "/")
    assert status == 200 and 'id="file"' in page and "/api/predict" in page
    status, info = request(server.url + "/api/info")
    assert status == 200 and info["model"] == "cct_2_3x2_32_keras" and info["classes"] == list(CLASSES)
    assert info["limits"]["max_pixels"] == 1_000_000


def test_predict_returns_top5_and_the_pooling_grid(server):
    data = png_bytes()
    status, result = request(server.url + "/api/predict", data)
    assert status == 200
    expected = server.classifier.predict(Image.open(io.BytesIO(data)), top_k=5)
    assert [p["label"] for p in result["predictions"]] == expected.labels
    assert [p["probability"] for p in result["predictions"]] == pytest.approx(expected.probabilities, abs=1e-6)
    grid = np.array(result["attention"]["grid"])
    assert grid.shape == (8, 8) and grid.sum() == pytest.approx(1.0, abs=1e-4)
    assert result["attention"]["image"].startswith("data:image/png;base64,")


def test_any_mode_is_accepted(server):
    for mode in ("L", "RGBA", "P", "CMYK"):
        buffer = io.BytesIO()
        Image.open(io.BytesIO(png_bytes())).convert(mode).save(buffer, format="TIFF" if mode == "CMYK" else "PNG")
        status, result = request(server.url + "/api/predict", buffer.getvalue())
        assert status == 200 and len(result["predictions"]) == 5


@pytest.mark.parametrize("body,status,message", [
    (b"this is not an image", 400, "the upload: not a readable image"),
    (b"", 400, "empty"),
    (png_bytes()[:200], 400, "truncated or corrupt"),
    (b"x" * (2**20 + 1), 413, "the limit is 1,048,576"),
])
def test_bad_uploads_get_a_clear_4xx(server, body, status, message):
    got, result = request(server.url + "/api/predict", body, method="POST")
    assert got == status and message in result["error"]


@pytest.mark.parametrize("size, message", [
    ((5000, 5000), "the upload: the image has 25,000,000 pixels; the limit is 1,000,000"),
    # over twice PIL's own limit, PIL raised an error of its own, and the server answered 500
    ((14_000, 13_000), "the upload: the image has over 178,956,970 pixels; the limit is 1,000,000"),
])
def test_decompression_bomb_is_refused_before_decoding(server, size, message):
    buffer = io.BytesIO()
    Image.new("L", size).save(buffer, format="PNG")  # millions of pixels in a few hundred kB at most
    assert len(buffer.getvalue()) < 200_000
    status, result = request(server.url + "/api/predict", buffer.getvalue())
    assert (status, result["error"]) == (413, message)


def multipart(fields):
    """A multipart/form-data body as a browser's form sends it: (name, filename or None, bytes) per field."""
    boundary = "----cctTestBoundary7MA4YWxkTrZu0gW"
    body = b""
    for name, filename, value in fields:
        disposition = f'form-data; name="{name}"' + (f'; filename="{filename}"' if filename else "")
        kind = "Content-Type: image/png\r\n" if filename else ""
        body += f"--{boundary}\r\nContent-Disposition: {disposition}\r\n{kind}\r\n".encode() + value + b"\r\n"
    return body + f"--{boundary}--\r\n".encode(), {"Content-Type": f"multipart/form-data; boundary={boundary}"}


def test_a_form_upload_predicts_its_file_as_the_raw_body_does(server):
    # an HTML form's, `curl -F`'s and `requests.post(files=...)`'s uploads were read as one broken image
    data = png_bytes(seed=3)
    _, raw = request(server.url + "/api/predict", data)
    body, headers = multipart([("note", None, b"hello"), ("file", "cat.png", data)])
    status, result = request(server.url + "/api/predict", body, headers=headers)
    assert status == 200 and result == raw
    body, headers = multipart([("note", None, b"hello")])
    status, result = request(server.url + "/api/predict", body, headers=headers)
    assert status == 400 and result["error"] == "the form has no file: send the image as a file field"


def test_paths_match_without_their_query_and_head_answers_as_get(server):
    status, page = request(server.url + "/?v=2")
    assert status == 200 and 'id="file"' in page
    assert request(server.url + "/api/info?x=1")[1]["model"] == "cct_2_3x2_32_keras"
    status, result = request(server.url + "/api/predict?top=5", png_bytes())
    assert status == 200 and len(result["predictions"]) == 5
    with urllib.request.urlopen(urllib.request.Request(server.url + "/", method="HEAD"), timeout=30) as response:
        assert response.status == 200 and response.read() == b""
        assert int(response.headers["Content-Length"]) == len(page.encode())


def test_unknown_paths_name_the_right_ones(server):
    assert request(server.url + "/nope") == (404, {"error": "no such page: /nope (pages: /, /api/info)"})
    assert request(server.url + "/predict", b"x") == (404, {"error": "no such endpoint: /predict (POST images to "
                                                                     "/api/predict)"})
    assert request(server.url + "/api/predict") == (405, {"error": "POST the image to /api/predict"})
    with pytest.raises(urllib.error.HTTPError) as error:
        urllib.request.urlopen(server.url + "/api/predict", timeout=30)
    assert error.value.headers["Allow"] == "POST"
    # http.server's own errors were HTML pages
    assert request(server.url + "/api/predict", method="DELETE") == (501, {"error": "Unsupported method ('DELETE')"})
    with socket.create_connection(server.server_address[:2], timeout=30) as connection:
        connection.sendall(b"GET / HTTP/1.1\r\nX-Long: " + b"x" * 70_000 + b"\r\n\r\n")
        head, body = connection.makefile("rb").read().split(b"\r\n\r\n", 1)
    assert head.startswith(b"HTTP/1.0 431") and b"Content-Type: application/json" in head
    assert json.loads(body) == {"error": "Line too long"}


def test_a_stalled_client_times_out_without_blocking_others(server):
    host, port = server.server_address[:2]
    stalled = socket.create_connection((host, port))
    stalled.sendall(b"POST /api/predict HTTP/1.1\r\nHost: x\r\nContent-Length: 5000\r\n\r\n" + b"x" * 10)
    started = time.monotonic()
    assert request(server.url + "/api/predict", png_bytes())[0] == 200
    stalled.settimeout(10)
    assert stalled.recv(100) == b""  # the server closed it after its request timeout
    assert time.monotonic() - started < LIMITS.request_timeout + 5
    stalled.close()


def test_load_on_loopback_has_no_errors(server):
    bodies = [png_bytes(seed=i) for i in range(8)]
    started = time.monotonic()
    with ThreadPoolExecutor(max_workers=8) as pool:
        statuses = list(pool.map(lambda i: request(server.url + "/api/predict", bodies[i % 8])[0], range(160)))
    elapsed = time.monotonic() - started
    assert statuses == [200] * 160
    assert elapsed < 60


def test_class_token_models_serve_without_a_heatmap():
    server = start("vit_lite_7_4_32")
    try:
        status, result = request(server.url + "/api/predict", png_bytes())
        assert status == 200 and result["attention"] is None and len(result["predictions"]) == 5
    finally:
        server.shutdown()
        server.server_close()


def test_a_port_in_use_is_a_one_line_error(server, capsys):
    from cct.cli import main

    port = server.server_address[1]
    assert main(["serve", "--port", str(port)]) == 1
    assert capsys.readouterr().err.strip() == f"cct: error: cannot serve at 127.0.0.1:{port}: Address already in use"


@pytest.mark.parametrize("host, loopback", [("0.0.0.0", "127.0.0.1"), ("::", "[::1]"), ("::1", "[::1]")])
def test_a_server_on_every_network_or_ipv6_gives_a_url_a_browser_opens(host, loopback):
    # it printed http://0.0.0.0:PORT, which browsers refuse to open; an IPv6 host failed ("Address family for
    # hostname not supported")
    classifier = cct.Classifier(cct.create_model("cct_keras", class_names=CLASSES))
    server = PredictionServer((host, 0), classifier, LIMITS)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    try:
        assert server.url == f"http://{loopback}:{server.server_address[1]}"
        assert request(server.url + "/api/info")[0] == 200
    finally:
        server.shutdown()
        server.server_close()
