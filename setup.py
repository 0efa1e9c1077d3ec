"""rtcore: a compiled-kernel inference runtime for Stable Diffusion image editing (CycleDiffusion).

The top-level folders are subpackages of one distribution (docs/DESIGN.md §1): kernels/ → rtcore.kernels,
export/ → rtcore.export, bench/ → rtcore.bench. torch is required but never pinned to a build, so installing
rtcore does not replace an installed torch (install torch first: the CPU or CUDA build you want).
"""

from setuptools import setup

# What the test suite needs, but ONNX Runtime, whose CPU and GPU packages are two extras ("test", "test-gpu").
# diffusers is the test oracle only; 0.42.1 is the version the parity facts were checked against. triton runs the
# kernel tests on the CPU under its interpreter; CUDA torch wheels bring their own triton. kernels: Hugging Face's
# package, which transformers imports, so that tests/test_import_names.py always has it.
# selenium drives Debian's chromium in tests/test_page.py (through Debian's chromedriver: nothing is downloaded).
TEST = ["pytest", "pytest-benchmark", "diffusers==0.42.1", "ruff", "triton", "onnx", "openvino", "nncf", "matplotlib",
        "kernels", "starlette", "uvicorn", "prometheus-client", "python-multipart", "ray[serve]", "selenium"]

setup(
    name="rtcore",
    version="0.1.0",
    description="Compiled-kernel inference runtime for Stable Diffusion image editing (CycleDiffusion)",
    long_description=open("README.md").read(),
    long_description_content_type="text/markdown",
    python_requires=">=3.10",
    packages=["rtcore", "rtcore.kernels", "rtcore.export", "rtcore.bench"],
    package_dir={"rtcore": "rtcore", "rtcore.kernels": "kernels", "rtcore.export": "export", "rtcore.bench": "bench"},
    # the one trained model that ships with rtcore (rtcore.export.train_shapes): fp16 safetensors, configs, tokenizer
    # and the page rtcore serve answers GET / with
    package_data={"rtcore": ["models/rtcore-shapes/*.json", "models/rtcore-shapes/*/*.json",
                             "models/rtcore-shapes/*/*.txt", "models/rtcore-shapes/*/*.safetensors",
                             "web/*.html"]},
    install_requires=[
        "torch>=2.1",
        "numpy",
        "safetensors",
        "transformers>=4.40",
        "huggingface_hub",
        "pillow",
        "tqdm",
    ],
    extras_require={
        "test": TEST + ["onnxruntime"],
        # the same on a GPU machine, with onnxruntime-gpu in place of onnxruntime: both at once provide one module,
        # and whichever is installed last wins, usually without the CUDA EP
        "test-gpu": TEST + ["onnxruntime-gpu"],
        "kernels": ["triton"],
        # later backends and services; onnxruntime-gpu provides the same module for GPU users: never install both
        "onnx": ["onnx", "onnxruntime"],
        "onnx-gpu": ["onnx", "onnxruntime-gpu"],
        # the openvino backend: rtcore's ONNX engines on OpenVINO's CPU plugin
        "openvino": ["onnx", "openvino", "nncf"],
        "bench": ["pytest-benchmark", "matplotlib", "diffusers==0.42.1"],
        "serve": ["starlette", "uvicorn", "prometheus-client", "python-multipart"],
        "ray": ["ray[serve]", "starlette", "prometheus-client", "python-multipart"],
    },
    entry_points={"console_scripts": ["rtcore=rtcore.cli:main"]},
)
