"""The repository's top-level kernels/ folder is rtcore.kernels, and never shadows Hugging Face's `kernels` package
(which transformers imports) when the repository root is on sys.path: `python -m pytest` and `python -m rtcore`,
run from the root, both put it first. Each check runs in a fresh interpreter started in the root."""

import importlib.metadata
import os
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]


def from_root(*args, isolated=False):
    """Runs ``python [-S] args`` with the repository root as the working directory (and so on sys.path)."""
    flags = ["-S"] if isolated else []  # -S: no site-packages, so no installed `kernels` either
    env = dict(os.environ, PYTHONPATH=str(ROOT) if isolated else "")
    return subprocess.run([sys.executable, *flags, *args], cwd=ROOT, capture_output=True, text=True, timeout=300,
                          env=env)


def installed_kernels():
    try:
        return importlib.metadata.distribution("kernels")
    except importlib.metadata.PackageNotFoundError:
        pytest.fail("Hugging Face's `kernels` is not installed; it is in the test extra (pip install -e '.[test]')")


def test_import_kernels_from_the_root_gives_hugging_faces_package():
    expected = Path(installed_kernels().locate_file("kernels/__init__.py")).resolve()
    result = from_root("-c", "import kernels, transformers.integrations.hub_kernels; print(kernels.__file__)")
    assert result.returncode == 0, result.stderr
    assert Path(result.stdout.strip()).resolve() == expected


def test_rtcore_kernels_stay_rtcore_kernels_beside_it():
    code = ("import kernels, rtcore.kernels as own; "
            "assert own.group_norm.__module__ == 'rtcore.kernels.group_norm'; "
            "assert not hasattr(kernels, 'group_norm'); print(own.__file__)")
    result = from_root("-c", code)
    assert result.returncode == 0, result.stderr
    assert Path(result.stdout.strip()) == ROOT / "kernels" / "__init__.py"


def test_without_hugging_faces_package_import_kernels_fails_as_if_the_folder_were_absent():
    result = from_root("-c", "import kernels", isolated=True)
    assert result.returncode == 1
    assert "ModuleNotFoundError: No module named 'kernels'" in result.stderr


def test_diffusers_and_the_cli_work_from_the_root(tmp_path):
    result = from_root("-c", "from diffusers import CycleDiffusionPipeline")
    assert result.returncode == 0, result.stderr
    result = from_root("-m", "rtcore", "demo", "--steps", "4", "--out-dir", str(tmp_path))
    assert result.returncode == 0, result.stderr
    assert (tmp_path / "grid.png").is_file()
