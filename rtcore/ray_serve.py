"""Scale-out on Ray Serve: each replica holds one pipeline (one engine directory on one
GPU), and Ray routes requests between replicas across GPUs and nodes, batches them, and autoscales.

    from rtcore.ray_serve import app
    serve.run(app("engines/sd15-onnx", device="cuda", num_replicas=4), route_prefix="/")
    # or: rtcore serve engines/sd15-onnx --ray --num-replicas 4 --device cuda

The HTTP contract is the one of ``rtcore serve`` — the same parser, limits and error → status table
(rtcore.service): POST /edit (multipart) → PNG, GET /healthz, GET /metrics (of the replica that answers). Each
replica admits at most ``max_queue + max_batch_size`` requests (429 past that) and gives each ``timeout_s`` (504).

Requests that arrive together are batched. Those that share their settings (image size, steps, strength,
guidance, η) run as one pipeline call with lists of prompts and images and one generator per item. Each item of a
batch equals that item edited alone, so batching changes throughput, never pixels; and when a group fails, its
members are run one by one, so a bad item fails only its own request.
"""

import torch

from .service import MAX_PIXELS, MAX_UPLOAD_BYTES, EditService, Limits, edit_one, png_bytes, stop_when

GROUP_KEYS = ("strength", "num_inference_steps", "guidance_scale", "source_guidance_scale", "eta", "cache_interval",
              "guidance_cutoff")


class RtcoreEditor:
    """The replica: one pipeline, its service (limits, admission, metrics) and a batched edit."""

    def __init__(self, model, backend=None, device="cpu", dtype=None, max_admitted=12, timeout_s=60.0,
                 limits=None):
        from rtcore import CycleDiffusion

        self.pipe = CycleDiffusion.from_pretrained(model, backend=backend, device=device, dtype=dtype)
        self.service = EditService(self.pipe, max_admitted, timeout_s, limits or Limits())

    def edit_group(self, items):
        """EditRequests sharing GROUP_KEYS and image size → PNG bytes, one pipeline call; it stops early only
        when every member has been cancelled."""
        settings = {k: items[0].kwargs[k] for k in GROUP_KEYS if k in items[0].kwargs}
        out = self.pipe(prompt=[item.kwargs["prompt"] for item in items],
                        source_prompt=[item.kwargs["source_prompt"] for item in items],
                        image=[item.image for item in items],
                        generator=[torch.Generator().manual_seed(item.seed) for item in items],
                        output_type="pil", callback=stop_when(*(item.cancel for item in items)), **settings)
        return [png_bytes(image) for image in out.images]

    def _alone(self, item):
        try:
            return edit_one(self.pipe, item)
        except Exception as err:  # noqa: BLE001  (returned to this request only, mapped by the status table)
            return err

    def edit_batch(self, items):
        """Any requests → one result per request (PNG bytes or the exception), grouping compatible ones."""
        groups = {}
        for k, item in enumerate(items):
            key = (item.image.size, tuple(item.kwargs.get(name) for name in GROUP_KEYS))
            groups.setdefault(key, []).append(k)
        results = [None] * len(items)
        for members in groups.values():
            try:
                for k, png in zip(members, self.edit_group([items[k] for k in members])):
                    results[k] = png
            except Exception:  # noqa: BLE001  one bad item (a prompt, NaN latents) must not fail the others
                for k in members:
                    results[k] = self._alone(items[k])
        return results


def app(model, backend=None, device="cpu", dtype=None, num_replicas=1, autoscaling_config=None,
        max_batch_size=4, batch_wait_timeout_s=0.02, num_gpus=None, num_cpus=None, max_queue=8, timeout_s=60.0,
        max_pixels=MAX_PIXELS, max_upload_bytes=MAX_UPLOAD_BYTES):
    """A Ray Serve application serving ``model``. Pass ``num_replicas`` or an ``autoscaling_config``; on GPUs,
    ``num_gpus=1`` gives each replica a GPU of its own."""
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
            if request.method == "GET" and path.endswith("healthz"):
                return self.service.healthz()
            if request.method == "GET" and path.endswith("metrics"):
                return self.service.metrics()
            if request.method != "POST" or not path.endswith("edit"):
                return JSONResponse({"error": "use POST /edit, GET /healthz or GET /metrics"}, status_code=404)
            # Ray Serve cancels this handler when its client disconnects: no polling of the connection here
            return await self.service.handle_edit(request, self._run, watch_disconnect=False)

    return RtcoreEdit.bind(model, backend, device, dtype, max_admitted, timeout_s,
                           Limits(max_upload_bytes, max_pixels))
