"""Scale-out on Ray Serve (DESIGN §9): each replica holds one pipeline (one engine directory on one GPU), and
Ray routes requests between replicas across GPUs and nodes, batches them, and autoscales.

    from rtcore.ray_serve import app
    serve.run(app("engines/sd15-onnx", device="cuda", num_replicas=4), route_prefix="/")
    # or: rtcore serve engines/sd15-onnx --ray --num-replicas 4 --device cuda

The HTTP contract is the one of ``rtcore serve``: POST /edit (multipart) → PNG, and GET /healthz. Requests that
arrive together are batched. Those that share their settings (image size, steps, strength, guidance, η) run as
one pipeline call with lists of prompts and images and one generator per item. Each item of a batch equals that
item edited alone, so batching changes throughput, never pixels.
"""

import io

import torch

from .serve import _parse

GROUP_KEYS = ("strength", "num_inference_steps", "guidance_scale", "source_guidance_scale", "eta")


class RtcoreEditor:
    """The replica: one pipeline, an HTTP entry point, and a batched edit."""

    def __init__(self, model, backend=None, device="cpu", dtype=None):
        from rtcore import CycleDiffusion

        self.pipe = CycleDiffusion.from_pretrained(model, backend=backend, device=device, dtype=dtype)

    def edit_group(self, items):
        """items: (image, kwargs, seed) sharing GROUP_KEYS and image size → PNG bytes, one pipeline call."""
        _, kwargs, _ = items[0]
        settings = {k: kwargs[k] for k in GROUP_KEYS if k in kwargs}
        out = self.pipe(prompt=[kw["prompt"] for _, kw, _ in items],
                        source_prompt=[kw["source_prompt"] for _, kw, _ in items],
                        image=[image.convert("RGB") for image, _, _ in items],
                        generator=[torch.Generator().manual_seed(seed) for _, _, seed in items],
                        output_type="pil", **settings)
        pngs = []
        for image in out.images:
            buffer = io.BytesIO()
            image.save(buffer, format="PNG")
            pngs.append(buffer.getvalue())
        return pngs

    def edit_batch(self, items):
        """Any requests → one result per request (PNG bytes or the exception), grouping compatible ones."""
        groups = {}
        for k, (image, kwargs, _) in enumerate(items):
            key = (image.size, tuple(kwargs.get(name) for name in GROUP_KEYS))
            groups.setdefault(key, []).append(k)
        results = [None] * len(items)
        for members in groups.values():
            try:
                for k, png in zip(members, self.edit_group([items[k] for k in members])):
                    results[k] = png
            except (ValueError, TypeError, FloatingPointError) as err:
                for k in members:
                    results[k] = err
        return results


def app(model, backend=None, device="cpu", dtype=None, num_replicas=1, autoscaling_config=None,
        max_batch_size=4, batch_wait_timeout_s=0.02, num_gpus=None):
    """A Ray Serve application serving ``model``. Pass ``num_replicas`` or an ``autoscaling_config``; on GPUs,
    ``num_gpus=1`` gives each replica a GPU of its own."""
    import anyio
    from ray import serve
    from starlette.responses import JSONResponse, Response

    options = {"num_gpus": num_gpus if num_gpus is not None else (1 if str(device).startswith("cuda") else 0)}
    scaling = {"autoscaling_config": autoscaling_config} if autoscaling_config else {"num_replicas": num_replicas}

    @serve.deployment(ray_actor_options=options, **scaling)
    class RtcoreEdit(RtcoreEditor):
        @serve.batch(max_batch_size=max_batch_size, batch_wait_timeout_s=batch_wait_timeout_s)
        async def _batched(self, items):
            return await anyio.to_thread.run_sync(self.edit_batch, items)

        async def __call__(self, request):
            if request.url.path.rstrip("/").endswith("healthz"):
                eng = self.pipe.engines
                return JSONResponse({"status": "ok", "backend": eng.backend, "device": str(eng.device)})
            if request.method != "POST" or not request.url.path.rstrip("/").endswith("edit"):
                return JSONResponse({"error": "use POST /edit or GET /healthz"}, status_code=404)
            try:
                item = await _parse(request)
            except (ValueError, OverflowError) as err:
                return JSONResponse({"error": str(err)}, status_code=400)
            result = await self._batched(item)
            if isinstance(result, Exception):
                return JSONResponse({"error": str(result)}, status_code=400)
            return Response(result, media_type="image/png")

    return RtcoreEdit.bind(model, backend, device, dtype)
