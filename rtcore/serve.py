"""``rtcore serve``: an HTTP edit service on Starlette + uvicorn.

    POST /edit      multipart form: image (file), prompt, source_prompt, and optionally strength,
                    num_inference_steps, guidance_scale, source_guidance_scale, eta, seed, preset → image/png,
                    with its stage timings (Server-Timing) and batch size (X-Rtcore-Batch-Size)
    GET  /          a page to try an edit in a browser; GET /samples, /samples/{k}.png: its sample scenes
    GET  /healthz   {"status": "ok", "backend": ..., "device": ...}
    GET  /metrics   Prometheus text: request latency histogram, queue depth, errors by kind, batch sizes

Requests are batched (rtcore.batching, the policy Ray Serve's front end uses too): those that share their settings
and arrive within ``batch_wait_s`` run as one pipeline call of up to ``max_batch`` images, and each image equals
that request edited alone. At most ``max_concurrency`` calls run at once, on worker threads (the pipeline is
thread-safe); at most ``max_concurrency·max_batch + max_queue`` requests are admitted, and past that the answer is
429 at once. Parsing, limits, the deadline (504), client disconnects and the error → status table are
rtcore.service's, shared with Ray Serve. (Cancellation runs a step callback, so on a GPU a served edit uses the plain
loop rather than the CUDA-graph replay.)
"""

from starlette.applications import Starlette
from starlette.routing import Route

from .batching import BATCH_WAIT_S, MAX_BATCH, Batcher, check_batching, edit_batch
from .pipeline import check_positive_int
from .service import MAX_PIXELS, MAX_UPLOAD_BYTES, EditService, Limits, page, sample_png, samples


def create_app(pipe, max_concurrency=1, max_queue=8, timeout_s=60.0, max_pixels=MAX_PIXELS,
               max_upload_bytes=MAX_UPLOAD_BYTES, max_batch=MAX_BATCH, batch_wait_s=BATCH_WAIT_S):
    """A Starlette app serving ``pipe`` (a CycleDiffusion; serving turns its progress bar off). Each app has its own
    Prometheus registry."""
    check_batching(max_batch, batch_wait_s)
    service = EditService(pipe, max_concurrency * max_batch + max_queue, timeout_s,
                          Limits(max_upload_bytes, max_pixels))
    batcher = Batcher(lambda items: edit_batch(pipe, items, service.batch_sizes.observe), max_batch, batch_wait_s,
                      max_concurrency)

    async def run(item):
        return await batcher.submit(item)

    async def edit(request):
        return await service.handle_edit(request, run)

    async def healthz(request):
        return service.healthz()

    async def metrics(request):
        return service.metrics()

    async def home(request):
        return page()

    async def sample_list(request):
        return samples()

    async def sample(request):
        return sample_png(request.path_params["k"])

    return Starlette(routes=[Route("/edit", edit, methods=["POST"]), Route("/healthz", healthz),
                             Route("/metrics", metrics), Route("/", home), Route("/samples", sample_list),
                             Route("/samples/{k:int}.png", sample)])


def serve(model, host="127.0.0.1", port=8000, backend=None, device="cpu", dtype=None, max_concurrency=1,
          max_queue=8, timeout_s=60.0, max_pixels=None, max_upload_bytes=None, ray=False, num_replicas=1,
          max_batch=None, batch_wait_s=None):
    """Loads ``model`` (checkpoint or engine directory) and serves it until interrupted; ``ray=True`` serves it
    from ``num_replicas`` Ray Serve replicas instead (see rtcore.ray_serve), with the same limits. Limits left
    as None take rtcore.service's defaults."""
    import uvicorn

    max_pixels = MAX_PIXELS if max_pixels is None else max_pixels
    max_upload_bytes = MAX_UPLOAD_BYTES if max_upload_bytes is None else max_upload_bytes
    max_batch = MAX_BATCH if max_batch is None else max_batch
    batch_wait_s = BATCH_WAIT_S if batch_wait_s is None else batch_wait_s
    for name, value in (("max_pixels", max_pixels), ("max_upload_bytes", max_upload_bytes),
                        ("max_concurrency", max_concurrency), ("num_replicas", num_replicas)):
        check_positive_int(value, name)
    check_batching(max_batch, batch_wait_s)
    check_positive_int(max_queue, "max_queue", minimum=0)
    if not timeout_s > 0:
        raise ValueError(f"timeout must be a number of seconds > 0, got {timeout_s!r}")

    if ray:
        from ray import serve as ray_serve

        from .ray_serve import app

        ray_serve.start(http_options={"host": host, "port": port})
        ray_serve.run(app(model, backend, device, dtype, num_replicas=num_replicas, max_queue=max_queue,
                          timeout_s=timeout_s, max_pixels=max_pixels, max_upload_bytes=max_upload_bytes,
                          max_batch_size=max_batch, batch_wait_timeout_s=batch_wait_s),
                      route_prefix="/", blocking=True)
        return

    from rtcore import CycleDiffusion

    pipe = CycleDiffusion.from_pretrained(model, backend=backend, device=device, dtype=dtype)
    app = create_app(pipe, max_concurrency, max_queue, timeout_s, max_pixels, max_upload_bytes, max_batch, batch_wait_s)
    uvicorn.run(app, host=host, port=port, log_level="info")
