"""The rtcore command, run for real as a subprocess."""

import subprocess
import sys

import PIL.Image
import pytest

from rtcore.demo import sample_image


def rtcore(*args):
    return subprocess.run([sys.executable, "-m", "rtcore", *args], capture_output=True, text=True, timeout=300)


@pytest.fixture
def input_png(tmp_path):
    path = tmp_path / "in.png"
    sample_image(64, 48).save(path)
    return path


def edit_args(model, image, out, *extra):
    return ["edit", "--model", str(model), "--image", str(image), "--source-prompt", "a horse", "--prompt",
            "an elephant", "--out", str(out), "--steps", "5", *extra]


def test_edit_writes_the_image(tiny_sd1, input_png, tmp_path):
    out = tmp_path / "sub" / "out.png"
    result = rtcore(*edit_args(tiny_sd1, input_png, out, "--seed", "3"))
    assert result.returncode == 0, result.stderr
    assert PIL.Image.open(out).size == (64, 48)
    assert "denoise" in result.stdout


def test_edit_never_overwrites_without_asking(tiny_sd1, input_png, tmp_path):
    out = tmp_path / "out.png"
    out.write_bytes(b"precious")
    result = rtcore(*edit_args(tiny_sd1, input_png, out, "--quiet"))
    assert result.returncode == 2 and "--overwrite" in result.stderr
    assert out.read_bytes() == b"precious"
    result = rtcore(*edit_args(tiny_sd1, input_png, input_png, "--overwrite"))
    assert result.returncode == 2 and "input image" in result.stderr


@pytest.mark.parametrize("extra,name", [(["--strength", "1.5"], "strength"), (["--eta", "-1"], "eta")])
def test_edit_bad_values_exit_2_with_the_parameter_named(tiny_sd1, input_png, tmp_path, extra, name):
    result = rtcore(*edit_args(tiny_sd1, input_png, tmp_path / "o.png", *extra))
    assert result.returncode == 2 and name in result.stderr
    assert "Traceback" not in result.stderr


def test_edit_missing_model(input_png, tmp_path):
    result = rtcore(*edit_args(tmp_path / "no-model", input_png, tmp_path / "o.png"))
    assert result.returncode == 2 and "not found" in result.stderr


def test_demo(tmp_path):
    result = rtcore("demo", "--out-dir", str(tmp_path), "--steps", "5", "--size", "64")
    assert result.returncode == 0, result.stderr
    for name in ("before.png", "after.png"):
        assert PIL.Image.open(tmp_path / name).size == (64, 64)
    for stage in ("vae_encode", "text_encode", "denoise", "vae_decode"):
        assert stage in result.stdout


def test_generate_and_img2img(tiny_sd1, input_png, tmp_path):
    out = tmp_path / "gen.png"
    result = rtcore("generate", "--model", str(tiny_sd1), "--prompt", "a horse", "--out", str(out), "--steps", "3",
                    "--scheduler", "dpm++2m",
                    "--height", "64", "--width", "48")
    assert result.returncode == 0, result.stderr
    assert PIL.Image.open(out).size == (48, 64)
    out2 = tmp_path / "i2i.png"
    result = rtcore("img2img", "--model", str(tiny_sd1), "--prompt", "an elephant", "--image", str(input_png),
                    "--out", str(out2), "--steps", "4", "--strength", "0.5")
    assert result.returncode == 0, result.stderr
    assert PIL.Image.open(out2).size == (64, 48)
    result = rtcore("generate", "--model", str(tiny_sd1), "--prompt", "a", "--out", str(out), "--height", "50")
    assert result.returncode == 2 and "--overwrite" in result.stderr
