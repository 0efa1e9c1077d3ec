"""Scale-out on Ray Serve: each replica holds one pipeline (one engine directory on one
GPU), and Ray routes requests between replicas across GPUs and nodes, batches them, and autoscales.

    from rtcore.ray_serve import app
    serve.run(app("engines/sd15-onnx", device="cuda", num_replicas=4), route_prefix="/")
    # or: rtcore serve engines/sd15-onnx --ray --num-replicas 4 --device cuda

The HTTP contract is the one of ``rtcore serve`` — the same parser, limits and error → status table
(rtcore.service): POST /edit (multipart) → PNG, GET /healthz, GET /metrics (of the replica that answers). Each
replica admits at most ``max_queue + max_batch_size`` requests (429 past that) and gives each ``timeout_s`` (504).

Requests that arrive together are batched (Ray's ``serve.batch`` collects them) and run by rtcore.batching, the
policy ``rtcore serve`` uses too: those that share their settings run as one pipeline call with one generator per
item, so each item of a batch equals that item edited alone, and a bad item fails only its own request.
"""

import re

from .batching import BATCH_WAIT_S, MAX_BATCH, check_batching, edit_batch
from .service import MAX_PIXELS, MAX_UPLOAD_BYTES, EditService, Limits, page, sample_png, samples


class RtcoreEditor:
    """The replica: one pipeline, its service (limits, admission, metrics) and a batched edit."""

    def __init__(self, model, backend=None, device="cpu", dtype=None, max_admitted=12, timeout_s=60.0,
                 limits=None):
        from rtcore import CycleDiffusion

        self.pipe = CycleDiffusion.from_pretrained(model, backend=backend, device=device, dtype=dtype)
        self.service = EditService(self.pipe, max_admitted, timeout_s, limits or Limits())

    def edit_batch(self, items):
        """Any requests → one result per request (an EditResult or the exception), compatible ones in one call."""
        return edit_batch(self.pipe, items, self.service.batch_sizes.observe)


def app(model, backend=None, device="cpu", dtype=None, num_replicas=1, autoscaling_config=None,
        max_batch_size=MAX_BATCH, batch_wait_timeout_s=BATCH_WAIT_S, num_gpus=None, num_cpus=None, max_queue=8,
        timeout_s=60.0, max_pixels=MAX_PIXELS, max_upload_bytes=MAX_UPLOAD_BYTES):
    """A Ray Serve application serving ``model``. Pass ``num_replicas`` or an ``autoscaling_config``; on GPUs,
    ``num_gpus=1`` gives each replica a GPU of its own."""
    check_batching(max_batch_size, batch_wait_timeout_s)
    import anyio
    from ray import serve
    from starlette.responses import JSONResponse

    options = {"num_gpus": num_gpus if num_gpus is not None else (1 if str(device).startswith("cuda") else 0)}
    if num_cpus is not None:
        options["num_cpus"] = num_cpus
    scaling = {"autoscaling_config": autoscaling_config} if autoscaling_config else {"num_replicas": num_replicas}
    max_admitted = max_queue + max_batch_size  # per replica: one running batch and the queue
    # Ray's own per-replica cap sits above ours, so that overflow reaches the replica and gets rtcore's 429
    # instead of waiting unbounded in Ray's router
    max_ongoing = max_admitted + max_batch_size

    @serve.deployment(ray_actor_options=options, max_ongoing_requests=max_ongoing, **scaling)
    class RtcoreEdit(RtcoreEditor):
        @serve.batch(max_batch_size=max_batch_size, batch_wait_timeout_s=batch_wait_timeout_s)
        async def _batched(self, items):
            return await anyio.to_thread.run_sync(self.edit_batch, items)

        async def _run(self, item):
            result = await self._batched(item)
            if isinstance(result, Exception):
                raise result
            return result

        async def __call__(self, request):
            path = request.url.path.rstrip("/")
            relative = path[len(request.scope.get("root_path", "").rstrip("/")):]  # past Ray's route prefix
            if request.method == "GET" and path.endswith("healthz"):
                return self.service.healthz()
            if request.method == "GET" and path.endswith("metrics"):
                return self.service.metrics()
            if request.method == "GET" and relative == "":
                return page()
            if request.method == "GET" and relative == "/samples":
                return samples()
            sample = re.fullmatch(r"/samples/(\d+)\.png", relative)
            if request.method == "GET" and sample:
                return sample_png(int(sample[1]))
            if request.method != "POST" or not path.endswith("edit"):
                return JSONResponse({"error": "use POST /edit, GET /healthz or GET /metrics"}, status_code=404)
            # Ray Serve cancels this handler when its client disconnects: no polling of the connection here
            return await self.service.handle_edit(request, self._run, watch_disconnect=False)

    return RtcoreEdit.bind(model, backend, device, dtype, max_admitted, timeout_s,
                           Limits(max_upload_bytes, max_pixels))
