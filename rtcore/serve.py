"""``rtcore serve``: an HTTP edit service on Starlette + uvicorn.

    POST /edit      multipart form: image (file), prompt, source_prompt, and optionally strength,
                    num_inference_steps, guidance_scale, source_guidance_scale, eta, seed → image/png
    GET  /healthz   {"status": "ok", "backend": ..., "device": ...}
    GET  /metrics   Prometheus text: request latency histogram, queue depth, errors by kind

Admission is bounded. At most ``max_concurrency`` edits run at once, on worker threads, because the pipeline is
thread-safe. At most ``max_queue`` more may wait. Past that the answer is 429 at once, not an unbounded backlog.
Each request has a deadline, and past it the answer is 504. A step callback stops the edit at the next step when
its deadline passes or its client disconnects, so abandoned work does not hold a worker. (A callback runs the
plain loop; on a GPU that gives up the CUDA-graph replay in exchange for cancellation.)
Validation errors from the runtime are 400s that carry its message; nothing in the response is a traceback.
"""

import io
import threading
import time

import anyio
import PIL.Image
import torch
from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, generate_latest
from starlette.applications import Starlette
from starlette.responses import JSONResponse, Response
from starlette.routing import Route

MAX_UPLOAD_BYTES = 20 << 20
FIELDS = {"strength": float, "num_inference_steps": int, "guidance_scale": float, "source_guidance_scale": float,
          "eta": float, "seed": int}


class _Cancelled(Exception):
    pass


class _Admission:
    """Counts requests in the system (running + waiting); refuses past the bound instead of queueing forever."""

    def __init__(self, max_concurrency, max_queue):
        self.limit = max_concurrency + max_queue
        self.inflight = 0
        self.lock = threading.Lock()

    def try_enter(self):
        with self.lock:
            if self.inflight >= self.limit:
                return False
            self.inflight += 1
            return True

    def leave(self):
        with self.lock:
            self.inflight -= 1


def _error(status, message, errors, kind):
    errors.labels(kind=kind).inc()
    return JSONResponse({"error": message}, status_code=status)


async def _parse(request):
    """The form → (PIL image, pipeline kwargs, seed); raises ValueError with a message naming the bad field."""
    if int(request.headers.get("content-length") or 0) > MAX_UPLOAD_BYTES:
        raise OverflowError(f"request body over {MAX_UPLOAD_BYTES >> 20} MiB")
    if not request.headers.get("content-type", "").startswith("multipart/form-data"):
        raise ValueError("POST /edit takes multipart/form-data with an image file and prompt fields")
    try:
        form = await request.form()
    except Exception as err:  # malformed multipart bodies raise parser-specific errors
        raise ValueError(f"malformed multipart body: {err}") from None
    upload = form.get("image")
    if upload is None or isinstance(upload, str):
        raise ValueError("image is required: send it as a file field named 'image'")
    data = await upload.read()
    try:
        image = PIL.Image.open(io.BytesIO(data))
        image.load()
    except Exception:
        raise ValueError("image: the uploaded file is not an image PIL can read") from None
    kwargs = {}
    for name in ("prompt", "source_prompt"):
        value = form.get(name)
        if not isinstance(value, str):
            raise ValueError(f"{name} is required (a text field)")
        kwargs[name] = value
    for name, kind in FIELDS.items():
        if form.get(name) is not None:
            try:
                kwargs[name] = kind(form.get(name))
            except ValueError:
                raise ValueError(f"{name} must be {'an integer' if kind is int else 'a number'}, got "
                                 f"{form.get(name)!r}") from None
    return image, kwargs, kwargs.pop("seed", 0)


def create_app(pipe, max_concurrency=1, max_queue=8, timeout_s=60.0):
    """A Starlette app serving ``pipe`` (a CycleDiffusion). Each app has its own Prometheus registry."""
    registry = CollectorRegistry()
    latency = Histogram("rtcore_request_seconds", "edit request latency", ["status"], registry=registry,
                        buckets=(0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60, 120))
    queue_depth = Gauge("rtcore_queue_depth", "edit requests admitted and not finished", registry=registry)
    errors = Counter("rtcore_errors_total", "failed edit requests by kind", ["kind"], registry=registry)
    admission = _Admission(max_concurrency, max_queue)
    limiter = anyio.CapacityLimiter(max_concurrency)

    def run_edit(image, kwargs, seed, cancel):
        def check(step, timestep, latents):
            if cancel.is_set():
                raise _Cancelled

        out = pipe(image=image, generator=torch.Generator().manual_seed(seed), output_type="pil", callback=check,
                   **kwargs)
        buffer = io.BytesIO()
        out.images[0].save(buffer, format="PNG")
        return buffer.getvalue()

    async def watch_disconnect(request, cancel):
        while not cancel.is_set():
            if await request.is_disconnected():
                cancel.set()
                return
            await anyio.sleep(0.05)

    async def edit(request):
        start = time.perf_counter()
        status = 500
        try:
            try:
                image, kwargs, seed = await _parse(request)
            except OverflowError as err:
                status = 413
                return _error(status, str(err), errors, "too_large")
            except ValueError as err:
                status = 400
                return _error(status, str(err), errors, "bad_request")
            if not admission.try_enter():
                status = 429
                return _error(status, f"server busy: {admission.limit} edits already admitted; retry later",
                              errors, "queue_full")
            queue_depth.inc()
            cancel = threading.Event()
            outcome = {}

            async def run():
                # exceptions are kept, not raised: a task group would wrap them in an ExceptionGroup
                try:
                    with anyio.fail_after(timeout_s):
                        outcome["png"] = await anyio.to_thread.run_sync(run_edit, image, kwargs, seed, cancel,
                                                                        limiter=limiter, abandon_on_cancel=True)
                except Exception as err:  # noqa: BLE001  (classified below)
                    outcome["error"] = err
                finally:
                    cancel.set()  # stops the watcher, and the edit if it still runs

            try:
                async with anyio.create_task_group() as tasks:
                    tasks.start_soon(watch_disconnect, request, cancel)
                    tasks.start_soon(run)
                if "error" in outcome:
                    raise outcome["error"]
                png = outcome["png"]
                status = 200
                return Response(png, media_type="image/png")
            except TimeoutError:
                status = 504
                return _error(status, f"edit did not finish within {timeout_s} s", errors, "timeout")
            except (ValueError, TypeError) as err:
                status = 400
                return _error(status, str(err), errors, "bad_request")
            except _Cancelled:
                status = 499  # the client went away
                return _error(status, "client disconnected", errors, "disconnected")
            except FloatingPointError as err:
                status = 500
                return _error(status, str(err), errors, "nan")
            finally:
                admission.leave()
                queue_depth.dec()
        finally:
            latency.labels(status=str(status)).observe(time.perf_counter() - start)

    async def healthz(request):
        eng = pipe.engines
        return JSONResponse({"status": "ok", "backend": eng.backend, "device": str(eng.device),
                             "dtype": str(eng.dtype).replace("torch.", ""), "inflight": admission.inflight})

    async def metrics(request):
        return Response(generate_latest(registry), media_type="text/plain; version=0.0.4")

    return Starlette(routes=[Route("/edit", edit, methods=["POST"]), Route("/healthz", healthz),
                             Route("/metrics", metrics)])


def serve(model, host="127.0.0.1", port=8000, backend=None, device="cpu", dtype=None, max_concurrency=1,
          max_queue=8, timeout_s=60.0, ray=False, num_replicas=1):
    """Loads ``model`` (checkpoint or engine directory) and serves it until interrupted; ``ray=True`` serves it
    from ``num_replicas`` Ray Serve replicas instead (see rtcore.ray_serve)."""
    import uvicorn

    if ray:
        from ray import serve as ray_serve

        from .ray_serve import app

        ray_serve.start(http_options={"host": host, "port": port})
        ray_serve.run(app(model, backend, device, dtype, num_replicas=num_replicas), route_prefix="/",
                      blocking=True)
        return

    from rtcore import CycleDiffusion

    pipe = CycleDiffusion.from_pretrained(model, backend=backend, device=device, dtype=dtype)
    app = create_app(pipe, max_concurrency, max_queue, timeout_s)
    uvicorn.run(app, host=host, port=port, log_level="info")
