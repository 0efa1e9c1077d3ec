"""``rtcore serve``: an HTTP edit service on Starlette + uvicorn.

    POST /edit      multipart form: image (file), prompt, source_prompt, and optionally strength,
                    num_inference_steps, guidance_scale, source_guidance_scale, eta, seed → image/png
    GET  /healthz   {"status": "ok", "backend": ..., "device": ...}
    GET  /metrics   Prometheus text: request latency histogram, queue depth, errors by kind

At most ``max_concurrency`` edits run at once, on worker threads (the pipeline is thread-safe), and at most
``max_queue`` more may wait; past that the answer is 429 at once. Parsing, limits, the deadline (504), client
disconnects and the error → status table are rtcore.service's, shared with Ray Serve. (Cancellation runs a step
callback, so on a GPU a served edit uses the plain loop rather than the CUDA-graph replay.)
"""

import anyio
from starlette.applications import Starlette
from starlette.routing import Route

from .pipeline import check_positive_int
from .service import MAX_PIXELS, MAX_UPLOAD_BYTES, EditService, Limits, edit_one


def create_app(pipe, max_concurrency=1, max_queue=8, timeout_s=60.0, max_pixels=MAX_PIXELS,
               max_upload_bytes=MAX_UPLOAD_BYTES):
    """A Starlette app serving ``pipe`` (a CycleDiffusion). Each app has its own Prometheus registry."""
    service = EditService(pipe, max_concurrency + max_queue, timeout_s, Limits(max_upload_bytes, max_pixels))
    limiter = anyio.CapacityLimiter(max_concurrency)

    async def run(item):
        return await anyio.to_thread.run_sync(edit_one, pipe, item, limiter=limiter, abandon_on_cancel=True)

    async def edit(request):
        return await service.handle_edit(request, run)

    async def healthz(request):
        return service.healthz()

    async def metrics(request):
        return service.metrics()

    return Starlette(routes=[Route("/edit", edit, methods=["POST"]), Route("/healthz", healthz),
                             Route("/metrics", metrics)])


def serve(model, host="127.0.0.1", port=8000, backend=None, device="cpu", dtype=None, max_concurrency=1,
          max_queue=8, timeout_s=60.0, max_pixels=None, max_upload_bytes=None, ray=False, num_replicas=1):
    """Loads ``model`` (checkpoint or engine directory) and serves it until interrupted; ``ray=True`` serves it
    from ``num_replicas`` Ray Serve replicas instead (see rtcore.ray_serve), with the same limits. Limits left
    as None take rtcore.service's defaults."""
    import uvicorn

    max_pixels = MAX_PIXELS if max_pixels is None else max_pixels
    max_upload_bytes = MAX_UPLOAD_BYTES if max_upload_bytes is None else max_upload_bytes
    for name, value in (("max_pixels", max_pixels), ("max_upload_bytes", max_upload_bytes),
                        ("max_concurrency", max_concurrency), ("num_replicas", num_replicas)):
        check_positive_int(value, name)
    check_positive_int(max_queue, "max_queue", minimum=0)
    if not timeout_s > 0:
        raise ValueError(f"timeout must be a number of seconds > 0, got {timeout_s!r}")

    if ray:
        from ray import serve as ray_serve

        from .ray_serve import app

        ray_serve.start(http_options={"host": host, "port": port})
        ray_serve.run(app(model, backend, device, dtype, num_replicas=num_replicas, max_queue=max_queue,
                          timeout_s=timeout_s, max_pixels=max_pixels, max_upload_bytes=max_upload_bytes),
                      route_prefix="/", blocking=True)
        return

    from rtcore import CycleDiffusion

    pipe = CycleDiffusion.from_pretrained(model, backend=backend, device=device, dtype=dtype)
    app = create_app(pipe, max_concurrency, max_queue, timeout_s, max_pixels, max_upload_bytes)
    uvicorn.run(app, host=host, port=port, log_level="info")
