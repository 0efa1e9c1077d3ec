"""What both HTTP front ends share — ``rtcore serve`` (Starlette + uvicorn, rtcore/serve.py) and Ray Serve
(rtcore/ray_serve.py): the POST /edit request parser and its limits, the error → status table, admission,
deadlines and cancellation, metrics, and /healthz. Neither front end imports the other.

Limits, checked before any work that grows with the request:

- the body: ``max_upload_bytes`` whether or not the client sent a Content-Length (a chunked body is counted as it
  streams in and refused the moment it passes the limit);
- the image: ``max_pixels``, read from the file's header before a single pixel is decoded (a 100 KB PNG can
  declare 12000×12000 pixels, 430 MB once decoded); only common raster formats are opened, so PIL never hands an
  upload to an external program (its EPS plugin runs Ghostscript);
- the multipart form: one file and a few fields.

The status of every failure comes from one table, :data:`ERROR_STATUS`, so both front ends answer alike.
"""

import io
import threading
import time
from dataclasses import dataclass, field

import anyio
import PIL.Image
from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, generate_latest
from starlette.requests import Request
from starlette.responses import HTMLResponse, JSONResponse, Response

from .approximations import from_preset
from .images import ImageTooLarge, open_image

MAX_UPLOAD_BYTES = 20 << 20
MAX_PIXELS = 2048 * 2048  # SD works at 512²–1024²; anything larger is resized by the client, not decoded here
FIELDS = {"strength": float, "num_inference_steps": int, "guidance_scale": float, "source_guidance_scale": float,
          "eta": float, "seed": int}
SEED_RANGE = (0, 2**63 - 1)  # what torch.Generator.manual_seed takes


class BodyTooLarge(ValueError):
    pass


class Busy(Exception):
    pass


class Cancelled(Exception):
    """The client went away, or the deadline passed: the edit stops at its next step."""


# The first row whose exception type matches gives the status and the metrics label. Anything else is a 500 whose
# message names only the exception type: a traceback never reaches a client.
ERROR_STATUS = (
    ((BodyTooLarge, ImageTooLarge), 413, "too_large"),
    (Busy, 429, "queue_full"),
    (TimeoutError, 504, "timeout"),
    (Cancelled, 499, "disconnected"),
    (FloatingPointError, 500, "nan"),
    ((ValueError, TypeError), 400, "bad_request"),
)


def status_of(err):
    """An exception → (HTTP status, metrics label, message for the client)."""
    for types, status, kind in ERROR_STATUS:
        if isinstance(err, types):
            return status, kind, str(err)
    return 500, "internal", f"internal error ({type(err).__name__}); see the server log"


@dataclass
class Limits:
    max_upload_bytes: int = MAX_UPLOAD_BYTES
    max_pixels: int = MAX_PIXELS


@dataclass
class EditRequest:
    image: PIL.Image.Image
    kwargs: dict  # prompt, source_prompt and the optional FIELDS, as pipeline keyword arguments
    seed: int
    cancel: threading.Event = field(default_factory=threading.Event)


async def _read_body(request, max_bytes):
    declared = request.headers.get("content-length")
    if declared is not None:
        if not declared.isdigit():
            raise ValueError(f"Content-Length must be a byte count, got {declared!r}")
        if int(declared) > max_bytes:
            raise BodyTooLarge(f"request body of {int(declared)} bytes is over this server's limit of {max_bytes} "
                               "bytes")
    chunks, size = [], 0
    async for chunk in request.stream():  # counted as it arrives: a chunked body has no Content-Length to trust
        size += len(chunk)
        if size > max_bytes:
            raise BodyTooLarge(f"request body is over this server's limit of {max_bytes} bytes")
        chunks.append(chunk)
    return b"".join(chunks)


def _replay(body):
    """An ASGI receive that hands over an already-read body, so Starlette's form parser can run on it."""
    sent = False

    async def receive():
        nonlocal sent
        if sent:
            return {"type": "http.disconnect"}
        sent = True
        return {"type": "http.request", "body": body, "more_body": False}

    return receive


def _field(form, name, kind):
    raw = form.get(name)
    if not isinstance(raw, str):
        raise ValueError(f"{name} must be a text field")
    try:
        value = kind(raw)
    except ValueError:
        raise ValueError(f"{name} must be {'an integer' if kind is int else 'a number'}, got {raw!r}") from None
    if name == "seed" and not SEED_RANGE[0] <= value <= SEED_RANGE[1]:
        raise ValueError(f"seed must be an integer in [{SEED_RANGE[0]}, {SEED_RANGE[1]}], got {value}")
    return value


async def parse_edit_request(request, limits: Limits) -> EditRequest:
    """POST /edit's multipart form → an :class:`EditRequest`; raises ValueError (400) or a too-large error (413)
    whose message names the field or the limit."""
    if not request.headers.get("content-type", "").startswith("multipart/form-data"):
        raise ValueError("POST /edit takes multipart/form-data with an image file and prompt fields")
    body = await _read_body(request, limits.max_upload_bytes)
    try:
        form = await Request(request.scope, _replay(body)).form(max_files=1, max_fields=len(FIELDS) + 3)
    except Exception as err:  # noqa: BLE001  (malformed multipart bodies raise parser-specific errors)
        raise ValueError(f"malformed multipart body: {err}") from None
    upload = form.get("image")
    if upload is None or isinstance(upload, str):
        raise ValueError("image is required: send it as a file field named 'image'")
    image = open_image(await upload.read(), limits.max_pixels, name="image")
    kwargs = {}
    for name in ("prompt", "source_prompt"):
        value = form.get(name)
        if not isinstance(value, str):
            raise ValueError(f"{name} is required (a text field)")
        kwargs[name] = value
    for name, kind in FIELDS.items():
        if form.get(name) is not None:
            kwargs[name] = _field(form, name, kind)
    preset = form.get("preset")
    if preset is not None:  # exact or fast (rtcore.approximations): the feature caching and guidance cutoff it names
        if not isinstance(preset, str):
            raise ValueError("preset must be a text field")
        kwargs.update(from_preset(preset))
    return EditRequest(image=image, kwargs=kwargs, seed=kwargs.pop("seed", 0))


# -- the page (GET /) and the sample scenes it offers -------------------------------------------------------------

SAMPLE_SCENES = 12  # held-out scenes of the shipped model's world (rtcore.shapes) that the page offers


def page():
    """GET /: a plain HTML/JS page to try an edit (rtcore/web/index.html; nothing fetched from elsewhere)."""
    import importlib.resources

    return HTMLResponse(importlib.resources.files("rtcore").joinpath("web/index.html").read_text())


def _sample_scenes():
    from . import shapes

    return shapes.held_out(SAMPLE_SCENES)


def samples():
    """GET /samples: the sample scenes, each with its caption and a suggested edit (another colour)."""
    from . import shapes

    listing = []
    for k, scene in enumerate(_sample_scenes()):
        colour = [c for c in shapes.COLOURS if c != scene.colour][k % (len(shapes.COLOURS) - 1)]
        listing.append({"id": k, "caption": scene.caption,
                        "suggested_prompt": shapes.with_attribute(scene, "colour", colour).caption})
    return JSONResponse(listing)


def sample_png(k):
    """GET /samples/{k}.png: sample scene k as a PNG (404 past the last)."""
    from . import shapes

    if not 0 <= k < SAMPLE_SCENES:
        return JSONResponse({"error": f"no sample {k}: there are {SAMPLE_SCENES} (0 to {SAMPLE_SCENES - 1})"},
                            status_code=404)
    return Response(png_bytes(shapes.image(_sample_scenes()[k])), media_type="image/png")


def png_bytes(image):
    buffer = io.BytesIO()
    image.save(buffer, format="PNG")
    return buffer.getvalue()


def stop_when(*cancels):
    """A pipeline step callback that stops the edit once every one of ``cancels`` is set."""
    def check(step, timestep, latents):
        if all(c.is_set() for c in cancels):
            raise Cancelled("the edit was cancelled")
    return check


class EditService:
    """Admission, deadline, cancellation, error mapping and metrics around one way of running an edit.

    At most ``max_admitted`` requests are in the system (running + waiting) per service; past that the answer is
    429 at once, not an unbounded backlog. Each request gets ``timeout_s``; past it the answer is 504, and the
    request's cancel event stops its edit at the next step, so abandoned work does not hold a worker.
    """

    def __init__(self, pipe, max_admitted, timeout_s, limits: Limits):
        self.pipe, self.max_admitted, self.timeout_s, self.limits = pipe, max_admitted, timeout_s, limits
        pipe.set_progress_bar_config(disable=True)  # a service reports through /metrics, not a terminal bar per edit
        self.inflight = 0
        self._lock = threading.Lock()
        self.registry = CollectorRegistry()  # one per service, so several apps in one process do not collide
        self.latency = Histogram("rtcore_request_seconds", "edit request latency", ["status"], registry=self.registry,
                                 buckets=(0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60, 120))
        self.queue_depth = Gauge("rtcore_queue_depth", "edit requests admitted and not finished",
                                 registry=self.registry)
        self.errors = Counter("rtcore_errors_total", "failed edit requests by kind", ["kind"], registry=self.registry)
        self.batch_sizes = Histogram("rtcore_batch_size", "requests per pipeline call", registry=self.registry,
                                     buckets=(1, 2, 3, 4, 6, 8, 12, 16, 24, 32))

    def _enter(self):
        with self._lock:
            if self.inflight >= self.max_admitted:
                raise Busy(f"server busy: {self.max_admitted} edits already admitted; retry later")
            self.inflight += 1
        self.queue_depth.inc()

    def _leave(self):
        with self._lock:
            self.inflight -= 1
        self.queue_depth.dec()

    def error_response(self, err):
        status, kind, message = status_of(err)
        self.errors.labels(kind=kind).inc()
        return JSONResponse({"error": message}, status_code=status)

    async def handle_edit(self, request, run, watch_disconnect=True):
        """POST /edit: parse, admit, ``await run(item)`` → an rtcore.batching.EditResult under the deadline, sent
        as the PNG with its stage timings (Server-Timing, ms) and batch size (X-Rtcore-Batch-Size).
        ``watch_disconnect`` polls the client connection (Ray Serve cancels the handler itself when its client goes
        away)."""
        start = time.perf_counter()
        response = await self._handle_edit(request, run, watch_disconnect)
        self.latency.labels(status=str(response.status_code)).observe(time.perf_counter() - start)
        return response

    async def _handle_edit(self, request, run, watch_disconnect):
        try:
            item = await parse_edit_request(request, self.limits)
            self._enter()
        except Exception as err:  # noqa: BLE001  (mapped by the status table)
            return self.error_response(err)
        outcome = {}

        async def edit():
            # exceptions are kept, not raised: a task group would wrap them in an ExceptionGroup
            try:
                with anyio.fail_after(self.timeout_s):
                    outcome["result"] = await run(item)
            except TimeoutError:
                outcome["error"] = TimeoutError(f"edit did not finish within {self.timeout_s} s")
            except Exception as err:  # noqa: BLE001  (mapped by the status table)
                outcome["error"] = err
            finally:
                item.cancel.set()  # stops the watcher, and the edit if it still runs

        async def watch():
            while not item.cancel.is_set():
                if await request.is_disconnected():
                    outcome.setdefault("error", Cancelled("client disconnected"))
                    item.cancel.set()
                    return
                await anyio.sleep(0.05)

        try:
            async with anyio.create_task_group() as tasks:
                if watch_disconnect:
                    tasks.start_soon(watch)
                tasks.start_soon(edit)
        finally:
            self._leave()
        if "error" in outcome:
            return self.error_response(outcome["error"])
        result = outcome["result"]
        timing = ", ".join(f"{stage};dur={seconds * 1e3:.1f}" for stage, seconds in result.timings.items())
        return Response(result.png, media_type="image/png",
                        headers={"Server-Timing": timing, "X-Rtcore-Batch-Size": str(result.batch_size)})

    def healthz(self):
        eng = self.pipe.engines
        return JSONResponse({"status": "ok", "backend": eng.backend, "device": str(eng.device),
                             "dtype": str(eng.dtype).replace("torch.", ""), "inflight": self.inflight})

    def metrics(self):
        return Response(generate_latest(self.registry), media_type="text/plain; version=0.0.4")
