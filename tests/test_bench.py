"""The benchmark harness, run for real on the tiny preset (few steps, one round), and its FLOP counts."""

import copy
import json

import pytest

from rtcore.bench.bench_edit import main
from rtcore.bench.flops import peak_tflops, stage_flops
from rtcore.bench.report import compare


@pytest.fixture(scope="module")
def report(tmp_path_factory):
    out = tmp_path_factory.mktemp("bench")
    result = main(["--preset", "tiny", "--backends", "eager,openvino@bf16", "--peers", "diffusers", "--steps",
                   "5", "--runs", "2", "--peak-memory", "--out", str(out)])
    return result, out


@pytest.mark.slow  # the harness builds an OpenVINO engine and runs each pipeline in a fresh process
def test_harness_writes_json_markdown_and_chart(report):
    result, out = report
    saved = json.loads((out / "bench_edit.json").read_text())
    assert set(saved["results"]) == {"rtcore eager", "rtcore openvino@bf16", "diffusers"}
    for name, r in saved["results"].items():
        assert r["correct"], name
        # each pipeline alone in its own process: a cached load, two edits and the process's peak memory
        assert r["isolated"]["peak_rss_mb"] > 100 and r["isolated"]["edit_s"] > 0, r["isolated"]
        assert r["median_ms"] > 0 and r["p20_ms"] <= r["median_ms"] <= r["p80_ms"]
        assert set(r["stages_ms"]) >= {"text_encode", "vae_encode", "denoise", "vae_decode", "host_overhead"}
        assert r["stages_ms"]["denoise"] > 0 and r["cold_start_ms"] > 0
        assert r["device_memory_mb"] is None and r["host_rss_mb"] is not None  # a CPU run: host memory only
    assert saved["results"]["diffusers"]["ratio_vs_baseline"] == 1.0
    eager, bf16, peer = (saved["results"][n] for n in ("rtcore eager", "rtcore openvino@bf16", "diffusers"))
    assert eager["psnr_db_vs_rtcore_eager"] == float("inf") and eager["build_ms"] == 0
    assert peer["psnr_db_vs_rtcore_eager"] > 60  # fp32 against fp32: rounding only
    assert bf16["build_ms"] > 0 and bf16["cold_start_ms"] > 0
    assert 25 < bf16["psnr_db_vs_rtcore_eager"] < 60  # bf16 really ran
    assert saved["header"]["versions"]["torch"] and saved["header"]["git_revision"] is not None
    assert "| rtcore openvino@bf16 |" in (out / "bench_edit.md").read_text()
    assert "| rtcore openvino@bf16 |" in (out / "bench_edit.md").read_text().split("fresh process")[1]
    assert (out / "bench_edit.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


@pytest.mark.slow  # the report fixture: the harness run above
def test_compare_flags_regressions(report):
    result, _ = report
    slower = copy.deepcopy(result)
    slower["results"]["rtcore openvino@bf16"]["median_ms"] *= 1.5
    slower["results"]["rtcore eager"]["correct"] = False
    flagged = compare(result, slower)
    assert any(f.startswith("rtcore openvino@bf16") for f in flagged) and any("now wrong" in f for f in flagged)
    assert compare(result, result) == []


def test_flop_counts_match_design_at_sd15_shapes(tmp_path):
    """docs/DESIGN.md §7: UNet 0.80 TFLOP per row, VAE encode 1.12, decode 2.52, CLIP 13 GFLOP/prompt (SD 1.5, 512²)."""
    from rtcore.export.tiny import CLIP_L14, SD15_UNET, SD_VAE

    for name, cfg in (("unet", SD15_UNET), ("vae", SD_VAE), ("text_encoder", CLIP_L14)):
        (tmp_path / name).mkdir()
        (tmp_path / name / "config.json").write_text(json.dumps(cfg))
    flops = stage_flops(tmp_path, 512, 512, unet_rows=3, prompts=1, steps=40)
    assert flops["unet_per_row"] / 1e12 == pytest.approx(0.80, rel=0.01)
    assert flops["vae_encode"] / 1e12 == pytest.approx(1.12, rel=0.01)
    assert flops["vae_decode"] / 1e12 == pytest.approx(2.52, rel=0.01)
    assert flops["text_encode"] / 1e9 == pytest.approx(13, rel=0.03)
    assert flops["denoise"] / 1e12 == pytest.approx(0.80 * 3 * 40, rel=0.01)  # ≈ 96 TFLOP: docs/DESIGN.md §7, 3 rows


def test_peak_table():
    assert peak_tflops("NVIDIA H100 80GB HBM3", "bf16") == 989
    assert peak_tflops("NVIDIA H100 PCIe", "fp16") == 756
    assert peak_tflops("cpu", "fp32") is None


def test_kernel_report_rates_against_the_right_peak():
    """Kernel rows: GB/s against HBM bandwidth, TFLOP/s against the peak of the arithmetic each impl runs on."""
    from rtcore.bench.kernels import CASES, markdown, rates

    assert rates(1.0, {"bytes": 3.35e9}, "rtcore", "NVIDIA H100 80GB HBM3") == {"GB/s": 3350.0, "of_peak": 1.0}
    int8 = {"flops": 1979e9, "dtype": {"rtcore_int8": "int8", "torch_bf16": "bf16"}}
    assert rates(1.0, int8, "rtcore_int8", "NVIDIA H100 80GB HBM3")["of_peak"] == pytest.approx(1.0)
    assert rates(1.0, int8, "torch_bf16", "NVIDIA H100 80GB HBM3")["of_peak"] == pytest.approx(1979 / 989)
    assert rates(1.0, int8, "torch_bf16", "Some GPU")["of_peak"] is None
    assert len({name for name, _, _ in CASES}) == len(CASES) == 14
    row = {"case": "qkv_attention D=40", "impl": "rtcore", "median_ms": 0.5, "p20_ms": 0.4, "p80_ms": 0.6,
           "TFLOP/s": 1.0, "of_peak": None, "speedup_vs_baseline": 1.25, "baseline": "sdpa"}
    text = markdown({"header": {"device_name": "NVIDIA H100", "date": "2026-11-23", "git_revision": "abc"},
                     "timing": "do_bench", "results": [row]})
    assert "| qkv_attention D=40 | rtcore | 0.500 | 0.400 | 0.600 | 1.0 TFLOP/s | — | 1.25 (vs sdpa) |" in text


@pytest.mark.slow  # NNCF int8 and every CPU engine
def test_unet_row_benchmark_times_every_cpu_engine(tiny_sd1, onnx_dir, tmp_path):
    """The real-shape row benchmark, run on the tiny model: each engine timed, rated against the GEMM roofline
    measured in the same run, and its drift against rtcore eager fp32."""
    pytest.importorskip("openvino")
    pytest.importorskip("nncf")
    from rtcore.bench.unet_row import main as unet_row

    engines = "diffusers-fp32,eager-bf16,onnx-fp32,openvino-raw-f32,openvino-fp32,openvino-bf16,openvino-int8"
    report = unet_row(["--checkpoint", str(tiny_sd1), "--onnx", str(onnx_dir), "--engines", engines,
                       "--latents", "8,4", "--runs", "1", "--out", str(tmp_path)])
    rows = {e: r["latents"][8] for e, r in report["results"].items()}
    assert set(rows) == {"eager-fp32", *engines.split(",")}  # the drift reference runs too
    assert rows["eager-fp32"]["psnr_db"] == float("inf") and rows["diffusers-fp32"]["ratio_vs_diffusers"] == 1.0
    for engine in ("diffusers-fp32", "onnx-fp32", "openvino-raw-f32", "openvino-fp32"):
        assert rows[engine]["psnr_db"] > 60, engine  # fp32 everywhere: the same maths up to rounding
    for engine in ("eager-bf16", "openvino-bf16", "openvino-int8"):
        assert 15 < rows[engine]["psnr_db"] < 60, engine  # reduced precision really ran
    assert all(r["min_s"] > 0 and 0 < r["fraction_of_gemm"] for r in rows.values())
    assert report["settings"]["gemm_gflops"]["fp32"] > 1 and report["settings"]["unet_gflop_per_row"][8] > 0
    assert set(report["results"]["openvino-fp32"]["latents"]) == {8, 4}  # one engine, two latent sizes
    assert "| openvino-int8 | 8×8 |" in (tmp_path / "unet_row.md").read_text()


def test_a_pipeline_that_fails_is_a_failed_row_and_the_rest_are_measured(tmp_path):
    """A guard per pipeline: one that cannot build (bf16 ONNX is refused) must not take the run down after the
    other pipelines' builds, as the first GPU run's SD 1.5 step would have."""
    from rtcore.bench.report import chart, markdown

    report = main(["--preset", "tiny", "--backends", "eager,onnx@bf16", "--peers", "", "--steps", "4", "--runs", "1",
                   "--out", str(tmp_path)])
    failed, eager = report["results"]["rtcore onnx@bf16"], report["results"]["rtcore eager"]
    assert "dtype bf16 cannot be built for the onnx backend" in failed["error"] and not failed["correct"]
    assert eager["correct"] and eager["median_ms"] > 0
    assert "| rtcore onnx@bf16 | **FAILED**: ValueError: dtype bf16" in markdown(report)
    assert chart(report, tmp_path / "chart.png").stat().st_size > 0


def test_the_harness_times_each_speed_on_one_engine_and_counts_its_flops(tmp_path):
    """--speed: each approximation setting is a pipeline of its own on the same loaded engine, timed against the
    exact edit in the same run, with its UNet FLOPs counted; --edits-per-encode times encode once, edit many."""
    from rtcore.bench.report import markdown

    report = main(["--preset", "tiny", "--backends", "eager", "--speed", "exact,fast", "--peers", "", "--steps", "10",
                   "--runs", "1", "--edits-per-encode", "2", "--out", str(tmp_path)])
    exact, fast = report["results"]["rtcore eager"], report["results"]["rtcore eager fast"]
    assert fast["ratio_vs_exact"] > 0 and fast["cold_start_ms"] == 0  # the exact pipeline's engines, reused
    assert fast["unet_tflop_per_edit"] < 0.7 * exact["unet_tflop_per_edit"] and fast["psnr_db_vs_exact"] < 60
    assert fast["correct"] and fast["encode_edit"]["edits"] == 2
    text = markdown(report)
    assert "| rtcore eager fast |" in text.split("Faster settings")[1] and "Encode once, edit many" in text


def test_the_fast_preset_does_at_least_2_5x_fewer_unet_flops_in_a_default_sd15_edit(tmp_path):
    """Issue's bar, counted: a default edit (50 steps × 0.8, guidance 7.5, 512²) with the fast preset."""
    from rtcore.approximations import PRESETS, Approximations
    from rtcore.bench.flops import denoise_flops
    from rtcore.export.tiny import CLIP_L14, SD15_UNET, SD_VAE
    from rtcore.sampling import Rows

    for name, cfg in (("unet", SD15_UNET), ("vae", SD_VAE), ("text_encoder", CLIP_L14)):
        (tmp_path / name).mkdir()
        (tmp_path / name / "config.json").write_text(json.dumps(cfg))
    flops = stage_flops(tmp_path, 512, 512, unet_rows=3, prompts=3, steps=40)
    assert flops["unet_shallow_per_row"] / flops["unet_per_row"] == pytest.approx(0.224, abs=0.005)
    exact = denoise_flops(flops, 40, Rows("cycle"), Approximations())
    assert exact == flops["denoise"]  # the exact loop counts as before
    fast = denoise_flops(flops, 40, Rows("cycle"), Approximations(**PRESETS["fast"]))
    print(f"fast preset: {exact / fast:.2f}x fewer UNet FLOPs")
    assert exact / fast >= 2.5
