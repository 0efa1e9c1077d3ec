"""The rtcore command, run for real as a subprocess."""

import subprocess
import sys

import numpy as np
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


def in_process(*args):
    """``rtcore ARGS`` run by its main() in this process: (exit status, stderr). For the refusals, which come
    before any model is loaded, so a subprocess's 2 s of imports would be all the test measures."""
    import contextlib
    import io

    from rtcore.cli import main

    stderr = io.StringIO()
    with contextlib.redirect_stderr(stderr):
        status = main([str(a) for a in args])
    return status, stderr.getvalue()


def test_edit_never_overwrites_without_asking(tiny_sd1, input_png, tmp_path):
    out = tmp_path / "out.png"
    out.write_bytes(b"precious")
    status, stderr = in_process(*edit_args(tiny_sd1, input_png, out, "--quiet"))
    assert status == 2 and "--overwrite" in stderr
    assert out.read_bytes() == b"precious"
    status, stderr = in_process(*edit_args(tiny_sd1, input_png, input_png, "--overwrite"))
    assert status == 2 and "input image" in stderr


@pytest.mark.parametrize("extra,name", [(["--strength", "1.5"], "--strength"), (["--eta", "-1"], "--eta"),
                                        (["--steps", "0"], "--steps"), (["--guidance-scale", "nan"], "--guidance"),
                                        (["--cache-interval", "0"], "--cache-interval"),
                                        (["--preset", "fast", "--guidance-cutoff", "2"], "--guidance-cutoff")])
def test_edit_bad_values_exit_2_naming_the_flag_before_loading(input_png, tmp_path, extra, name):
    # a model folder that does not exist: the flag is refused before anything tries to load it
    status, stderr = in_process(*edit_args(tmp_path / "no-model", input_png, tmp_path / "o.png", *extra))
    assert status == 2 and name in stderr and "not found" not in stderr
    assert "Traceback" not in stderr


def test_edit_with_the_fast_preset(tiny_sd1, input_png, tmp_path):
    out = tmp_path / "fast.png"
    status, stderr = in_process(*edit_args(tiny_sd1, input_png, out, "--preset", "fast", "--quiet"))
    assert status == 0, stderr
    status, stderr = in_process(*edit_args(tiny_sd1, input_png, tmp_path / "exact.png", "--quiet"))
    assert status == 0, stderr
    fast, exact = (np.asarray(PIL.Image.open(p), dtype=int) for p in (out, tmp_path / "exact.png"))
    assert fast.shape == exact.shape and np.abs(fast - exact).max() > 0  # the preset reached the pipeline


def test_edit_missing_model(input_png, tmp_path):
    status, stderr = in_process(*edit_args(tmp_path / "no-model", input_png, tmp_path / "o.png"))
    assert status == 2 and "not found" in stderr


@pytest.mark.slow  # three CLI subprocesses, two of which load the model and run
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


def test_selfcheck_without_a_gpu_prints_every_stage_and_exits_0(capsys):
    """CI's path through `rtcore selfcheck --device cuda`: no CUDA here, so it prints the plan of every stage, with
    what each runs and its estimate, runs nothing and leaves docs/BENCHMARKS.md alone."""
    from rtcore.bench.selfcheck import DOCS, STAGES
    from rtcore.cli import main

    before = DOCS.read_text()
    assert main(["selfcheck", "--device", "cuda"]) == 0
    out = capsys.readouterr().out
    assert "no CUDA device here" in out and DOCS.read_text() == before
    for k, stage in enumerate(STAGES, 1):
        assert f"  {k}. {stage.name} (~{stage.estimate_s / 60:.1f} min): " in out
        assert stage.estimate_s <= 8 * 60, stage  # each fits a 10-minute call with room to spare
    assert "--backends compile --peers diffusers" in out and "--peers diffusers-compile,diffusers" in out
    assert "--preset sd21 --size 512" in out  # SD 2.1 at 512² unless 768² is asked for


def test_selfcheck_budget_skips_what_will_not_fit_and_says_so(capsys):
    from rtcore.bench.selfcheck import BY_NAME, main

    budget = BY_NAME["tests"].estimate_s + BY_NAME["kernels"].estimate_s + 10
    assert main(["--dry-run", "--stage", "tests,drift,kernels", "--budget-s", str(budget), "--sd21-size", "768"]) == 0
    out = capsys.readouterr().out
    assert "1. tests (" in out and "3. kernels (" in out and "skipped" not in out.split("3. kernels")[1].split("\n")[0]
    drift = out.split("2. drift")[1].split("\n")[0]
    assert f"skipped: its estimate {BY_NAME['drift'].estimate_s} s exceeds the" in drift
    with pytest.raises(SystemExit):
        main(["--dry-run", "--stage", "sd14"])


def test_selfcheck_writes_each_stage_between_its_own_markers(tmp_path):
    from rtcore.bench.selfcheck import DOCS, END, START, markdown, write_section
    from rtcore.metrics import psnr

    doc = tmp_path / "BENCHMARKS.md"
    doc.write_text(DOCS.read_text())
    hdr = {"device_name": "NVIDIA H100 80GB HBM3", "device": "cuda", "date": "2026-12-07", "git_revision": "abc",
           "versions": {"torch": "2.13.0", "triton": "3.9.0", "onnxruntime": "1.32.0"}}
    drift = {"drift": [("eager", "fp16", psnr([0.5], [0.5 + 1e-3]), "ok"), ("onnx", "fp16", None, "FAILED: x")],
             "graphs": [("eager", "fp16", 3, "ok")]}
    write_section("drift", markdown("drift", hdr, drift, 61.0), doc)
    write_section("tests", markdown("tests", hdr, {"rows": [("gpu tier", "passed", "7 passed")]}, 5.0), doc)
    text = doc.read_text()

    def outside(document):  # the document with the two stages' sections cut out
        for stage in ("drift", "tests"):
            head, rest = document.split(START.format(stage))
            document = head + rest.split(END.format(stage))[1]
        return document

    assert outside(text) == outside(DOCS.read_text())  # nothing outside a stage's markers moves
    assert "| eager | fp16 | 60.0 | ok |" in text and "| onnx | fp16 | — | FAILED: x |" in text
    assert "NVIDIA H100 80GB HBM3" in text and "| gpu tier | passed | 7 passed |" in text
    write_section("drift", "### drift\n\nagain\n", doc)  # a rerun replaces its section only
    again = doc.read_text()
    assert "again" in again and "60.0" not in again and "| gpu tier | passed |" in again
