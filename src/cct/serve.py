"""`cct serve`: a trained model behind a JSON API and a web page, on loopback.

    GET  /              the page: upload or drop an image, see the top-5 classes and the pooling heatmap
    GET  /api/info      {"model", "classes", "limits"}
    POST /api/predict   body: the image file's bytes, or a multipart form (an HTML form's, `curl -F file=@x.jpg`,
                        `requests.post(url, files=...)`) whose first file is the image ->
                        {"predictions": [{"label", "probability"}] * 5,
                        "attention": {"grid": [[...]], "image": "data:image/png;base64,..."} or null}

Paths are matched without their query string; HEAD answers as GET does, without the body.

Limits: upload size, image pixel count (decompression bombs), a socket timeout per request and a bounded
number of predictions at once (others wait up to the timeout, then get 503). Bad input gets a 4xx with a
JSON {"error": ...}; nothing a client sends stops the server.
"""

from __future__ import annotations

import base64
import email.parser
import email.policy
import io
import json
import socket
import threading
from dataclasses import asdict, dataclass
from http import HTTPStatus
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from importlib import resources
from urllib.parse import urlsplit

from PIL import Image

from .data.images import ImageTooLarge, open_image, tensor_to_image
from .errors import CCTError
from .explain import pooling_map
from .inference import Classifier


@dataclass(frozen=True)
class ServeLimits:
    max_upload_bytes: int = 10 * 2**20
    max_pixels: int = 40_000_000
    request_timeout: float = 15.0
    max_concurrent: int = 4


class RequestError(Exception):
    def __init__(self, status: HTTPStatus, message: str):
        super().__init__(message)
        self.status = status


def decode_image(data: bytes, max_pixels: int, size: int) -> Image.Image:
    """Upload bytes -> a decoded PIL image for a model of input `size`, as `open_image` decodes files (the pixel
    count checked before decoding)."""
    try:
        return open_image(io.BytesIO(data), "the upload", max_pixels, size)
    except ImageTooLarge as e:
        raise RequestError(HTTPStatus.REQUEST_ENTITY_TOO_LARGE, str(e)) from None
    except CCTError as e:
        raise RequestError(HTTPStatus.BAD_REQUEST, str(e)) from None


def form_file(content_type: str, body: bytes) -> bytes:
    """The first file of a multipart/form-data body."""
    form = email.parser.BytesParser(policy=email.policy.HTTP).parsebytes(
        f"Content-Type: {content_type}\r\n\r\n".encode() + body)
    for part in form.iter_parts():
        if part.get_filename() is not None:
            return part.get_payload(decode=True)
    raise RequestError(HTTPStatus.BAD_REQUEST, "the form has no file: send the image as a file field")


LOOPBACK_OF_ANY = {"0.0.0.0": "127.0.0.1", "::": "::1"}  # the addresses of every network, and this machine's


def host_port(host: str, port: int) -> str:
    """A host and port as URLs write them: "127.0.0.1:8000", "[::1]:8000"."""
    return f"[{host}]:{port}" if ":" in host else f"{host}:{port}"


class PredictionServer(ThreadingHTTPServer):
    daemon_threads = True

    def __init__(self, address: tuple[str, int], classifier: Classifier, limits: ServeLimits = ServeLimits()):
        # IPv4 or IPv6, as the host resolves (as http.server's command line chooses)
        self.address_family = socket.getaddrinfo(*address, type=socket.SOCK_STREAM, flags=socket.AI_PASSIVE)[0][0]
        super().__init__(address, Handler)
        self.classifier = classifier
        self.limits = limits
        self.slots = threading.BoundedSemaphore(limits.max_concurrent)
        self.page = resources.files("cct.web").joinpath("index.html").read_bytes()

    @property
    def on_every_network(self) -> bool:
        return self.server_address[0] in LOOPBACK_OF_ANY

    @property
    def url(self) -> str:
        """Where this machine reaches the server: loopback for one on every network (browsers refuse 0.0.0.0)."""
        host, port = self.server_address[:2]
        return f"http://{host_port(LOOPBACK_OF_ANY.get(host, host), port)}"

    def predict(self, image: Image.Image) -> dict:
        if not self.slots.acquire(timeout=self.limits.request_timeout):
            raise RequestError(HTTPStatus.SERVICE_UNAVAILABLE, "the server is busy; try again")
        try:
            prediction = self.classifier.predict(image, top_k=5)
            attention = None
            if self.classifier.model.pool is not None:
                seen, weights = pooling_map(self.classifier, image)
                buffer = io.BytesIO()
                tensor_to_image(seen).save(buffer, format="PNG")
                attention = {"grid": weights.tolist(),
                             "image": "data:image/png;base64," + base64.b64encode(buffer.getvalue()).decode()}
        finally:
            self.slots.release()
        return {"predictions": [{"label": label, "probability": p}
                                for label, p in zip(prediction.labels, prediction.probabilities)],
                "attention": attention}


class Handler(BaseHTTPRequestHandler):
    server: PredictionServer
    server_version = "cct-serve"

    def setup(self) -> None:
        self.timeout = self.server.limits.request_timeout
        super().setup()

    def log_message(self, format: str, *args) -> None:  # noqa: A002
        pass

    def _send(self, status: HTTPStatus, body: bytes, content_type: str) -> None:
        self.send_response(status)
        self.send_header("Content-Type", content_type)
        self.send_header("Content-Length", str(len(body)))
        self.send_header("Cache-Control", "no-store")
        if status == HTTPStatus.METHOD_NOT_ALLOWED:
            self.send_header("Allow", "POST")
        self.end_headers()
        if self.command != "HEAD":
            self.wfile.write(body)

    def _json(self, status: HTTPStatus, payload: dict) -> None:
        self._send(status, json.dumps(payload).encode(), "application/json")

    def send_error(self, code: int, message: str | None = None, explain: str | None = None) -> None:
        """http.server's own errors (a malformed request, a method other than GET, HEAD and POST) in JSON too."""
        self.close_connection = True
        self._json(HTTPStatus(code), {"error": message or HTTPStatus(code).phrase})

    @property
    def route(self) -> str:
        return urlsplit(self.path).path

    def do_GET(self) -> None:  # noqa: N802
        if self.route == "/":
            self._send(HTTPStatus.OK, self.server.page, "text/html; charset=utf-8")
        elif self.route == "/api/info":
            model = self.server.classifier.model
            self._json(HTTPStatus.OK, {"model": model.config.name, "classes": self.server.classifier.classes,
                                       "limits": asdict(self.server.limits)})
        elif self.route == "/api/predict":
            self._json(HTTPStatus.METHOD_NOT_ALLOWED, {"error": "POST the image to /api/predict"})
        else:
            self._json(HTTPStatus.NOT_FOUND, {"error": f"no such page: {self.route} (pages: /, /api/info)"})

    do_HEAD = do_GET  # noqa: N815

    def do_POST(self) -> None:  # noqa: N802
        try:
            if self.route != "/api/predict":
                raise RequestError(HTTPStatus.NOT_FOUND, f"no such endpoint: {self.route} (POST images to /api/predict)")
            body = self._body()
            content_type = self.headers.get("Content-Type", "")
            if content_type.startswith("multipart/form-data"):
                body = form_file(content_type, body)
            image = decode_image(body, self.server.limits.max_pixels, self.server.classifier.model.config.img_size)
            self._json(HTTPStatus.OK, self.server.predict(image))
        except RequestError as e:
            self.close_connection = True
            self._json(e.status, {"error": str(e)})
        except TimeoutError:
            self.close_connection = True
        except CCTError as e:
            self._json(HTTPStatus.UNPROCESSABLE_ENTITY, {"error": str(e)})
        except Exception as e:  # a bug must cost one request, never the server
            self.close_connection = True
            self._json(HTTPStatus.INTERNAL_SERVER_ERROR, {"error": f"internal error: {type(e).__name__}"})

    def _body(self) -> bytes:
        length = self.headers.get("Content-Length")
        if length is None or not length.isdigit():
            raise RequestError(HTTPStatus.LENGTH_REQUIRED, "send the image as the request body with a Content-Length")
        limit = self.server.limits.max_upload_bytes
        if int(length) > limit:
            if int(length) <= 4 * limit:  # read it away, so that the client is still listening for the answer
                remaining = int(length)
                while remaining > 0 and (chunk := self.rfile.read(min(1 << 16, remaining))):
                    remaining -= len(chunk)
            raise RequestError(HTTPStatus.REQUEST_ENTITY_TOO_LARGE,
                               f"the upload is {int(length):,} bytes; the limit is {limit:,}")
        if int(length) == 0:
            raise RequestError(HTTPStatus.BAD_REQUEST, "the upload is empty")
        return self.rfile.read(int(length))


def serve(classifier: Classifier, host: str = "127.0.0.1", port: int = 8000,
          limits: ServeLimits = ServeLimits()) -> None:
    """Serve until interrupted."""
    try:
        server = PredictionServer((host, port), classifier, limits)
    except OSError as e:
        raise CCTError(f"cannot serve at {host_port(host, port)}: {e.strerror or e}") from None
    with server:
        everywhere = (f", and to other machines at http://{socket.gethostname()}:{server.server_address[1]}"
                      if server.on_every_network else "")
        print(f"serving {classifier.model.config.name} at {server.url}{everywhere} (Ctrl-C to stop)", flush=True)
        server.serve_forever()
