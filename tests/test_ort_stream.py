"""ONNX Runtime on CUDA runs on the model's own torch stream: the provider options that say so (CPU-checkable part)."""

from types import SimpleNamespace

from rtcore.backends import _on_stream


def test_cuda_provider_is_given_the_models_stream():
    stream = SimpleNamespace(cuda_stream=0x7F00)  # what torch.cuda.Stream exposes: the cudaStream_t as an int
    assert _on_stream(["CUDAExecutionProvider", "CPUExecutionProvider"], stream) == [
        ("CUDAExecutionProvider", {"user_compute_stream": str(0x7F00)}), ("CPUExecutionProvider", {})]
    given = [("CUDAExecutionProvider", {"device_id": 1, "arena_extend_strategy": "kSameAsRequested"})]
    assert _on_stream(given, stream) == [("CUDAExecutionProvider", {"device_id": 1, "user_compute_stream": "32512",
                                                                   "arena_extend_strategy": "kSameAsRequested"})]
    assert given[0][1] == {"device_id": 1, "arena_extend_strategy": "kSameAsRequested"}  # the caller's list is kept
