"""The load benchmark, run for real and small: two rtcore serve processes (batched, unbatched) on loopback, closed-loop
clients, bounded runs that end by themselves, and its JSON, Markdown and plot."""

import http.client
import json

import pytest

from rtcore.bench import load

pytestmark = pytest.mark.slow  # starts two servers and drives them


def test_the_load_benchmark_measures_both_servers_and_stops_by_itself(tmp_path, monkeypatch):
    hosts = []

    class Recorded(http.client.HTTPConnection):  # the real connection, its host noted
        def __init__(self, host, *args, **kwargs):
            hosts.append(host)
            super().__init__(host, *args, **kwargs)

    monkeypatch.setattr(load.http.client, "HTTPConnection", Recorded)
    report = load.main(["--concurrency", "1,3", "--requests", "5", "--seconds", "60", "--steps", "4",
                        "--timeout", "120", "--out", str(tmp_path)])
    assert set(hosts) == {"127.0.0.1"}  # nothing but loopback
    assert list(report["configs"]) == ["batched", "unbatched"]
    for options in report["configs"].values():  # both servers get the same deadline
        assert options[options.index("--timeout") + 1] == "120.0"
    assert [(r["config"], r["concurrency"]) for r in report["runs"]] == [
        ("batched", 1), ("batched", 3), ("unbatched", 1), ("unbatched", 3)]
    for run in report["runs"]:
        assert run["requests"] == 5 and run["ok"] == 5 and run["other_failures"] == 0  # bounded, all answered
        assert 0 < run["p50_s"] <= run["p90_s"] <= run["p99_s"] and run["images_per_s"] > 0
        assert run["rss_after_mb"] > 100 and 0 < run["cpu_utilisation"] <= 1
    # how many requests shared a call is the server's answer (X-Rtcore-Batch-Size); unbatched, never more than one
    assert all(r["mean_batch"] >= 1 for r in report["runs"])
    assert all(r["mean_batch"] == 1 for r in report["runs"] if r["config"] == "unbatched")
    assert json.loads((tmp_path / "load.json").read_text())["runs"] == report["runs"]
    assert "batched vs unbatched" in (tmp_path / "load.md").read_text()
    assert (tmp_path / "load.png").stat().st_size > 10_000


def test_a_server_that_cannot_start_is_a_clear_error(tmp_path):
    with pytest.raises(RuntimeError, match="exited"):
        load.ServerProcess(tmp_path / "no-such-model", [], ready_s=60)
