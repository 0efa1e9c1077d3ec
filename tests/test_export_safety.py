"""An export never deletes or alters what the user gave it, and a killed build leaves nothing behind for long.

Every refused case hashes the user's folder before and after: it must be byte-identical, and the refusal must
come before any work (no partial build folder appears)."""

import hashlib
import os
import shutil
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch

from rtcore.export.build import build, cache_key, cached_build, fingerprint
from rtcore.manifest import FORMAT_VERSION, is_engine_directory, partial_directory, remove_abandoned, validate


def tree_digest(root):
    """sha256 over every path under ``root`` (folders included) and every file's bytes."""
    digest = hashlib.sha256()
    for path in sorted(Path(root).rglob("*")):
        digest.update(str(path.relative_to(root)).encode())
        if path.is_file():
            digest.update(path.read_bytes())
    return digest.hexdigest()


def no_partial_folders(parent):
    return not [p for p in Path(parent).iterdir() if ".building-" in p.name or ".stale-" in p.name]


@pytest.fixture
def checkpoint(tiny_sd1, tmp_path):
    """A copy of the tiny checkpoint that the test may put at risk."""
    return Path(shutil.copytree(tiny_sd1, tmp_path / "models" / "tiny"))


@pytest.fixture
def photos(tmp_path):
    """A user's folder, with a manifest.json of its own (a web app's, say): not an rtcore engine directory."""
    folder = tmp_path / "photos"
    (folder / "2026").mkdir(parents=True)
    (folder / "2026" / "horse.png").write_bytes(b"\x89PNG not really")
    (folder / "manifest.json").write_text('{"name": "my photos", "icons": []}')
    return folder


def refused(checkpoint, out, error, match, **options):
    """Asserts the build is refused with ``error`` matching ``match``, before any work, leaving every folder
    involved byte-identical."""
    watched = [p for p in (checkpoint, Path(out)) if p.exists()]
    before = [tree_digest(p) for p in watched]
    start = time.perf_counter()
    with pytest.raises(error, match=match):
        build(checkpoint, out, backend="onnx", overwrite=True, **options)
    assert time.perf_counter() - start < 5, "refused only after work"
    assert [tree_digest(p) for p in watched] == before
    assert no_partial_folders(Path(out).parent) and no_partial_folders(checkpoint.parent)


def test_out_is_the_checkpoint_itself(checkpoint):
    refused(checkpoint, checkpoint, ValueError, "is the checkpoint itself")


def test_out_inside_the_checkpoint(checkpoint):
    refused(checkpoint, checkpoint / "engines", ValueError, "inside the checkpoint")
    refused(checkpoint, checkpoint / "unet", ValueError, "inside the checkpoint")


def test_out_containing_the_checkpoint(checkpoint):
    refused(checkpoint, checkpoint.parent, ValueError, "contains the checkpoint")
    refused(checkpoint, checkpoint.parent.parent, ValueError, "contains the checkpoint")


def test_out_is_a_folder_of_the_users(checkpoint, photos):
    refused(checkpoint, photos, FileExistsError, "not an rtcore engine directory")


def test_out_is_a_file_or_a_link(checkpoint, photos, tmp_path):
    refused(checkpoint, photos / "2026" / "horse.png", FileExistsError, "not an rtcore engine directory")
    (tmp_path / "link").symlink_to(photos)
    refused(checkpoint, tmp_path / "link", FileExistsError, "not an rtcore engine directory")


def test_the_cli_refuses_with_one_line_and_exit_2(checkpoint, photos):
    before = tree_digest(photos)
    result = subprocess.run([sys.executable, "-m", "rtcore", "export", str(checkpoint), "--out", str(photos),
                             "--overwrite"], capture_output=True, text=True, timeout=120)
    assert result.returncode == 2 and "not an rtcore engine directory" in result.stderr
    assert "Traceback" not in result.stderr and tree_digest(photos) == before


def test_overwrite_replaces_an_engine_directory(onnx_dir, tiny_sd1, tmp_path):
    out = Path(shutil.copytree(onnx_dir, tmp_path / "engine"))
    (out / "unet" / "model.onnx").write_bytes(b"stale")  # an engine that no longer validates is still replaced
    assert is_engine_directory(out)
    build(tiny_sd1, out, backend="onnx", height=64, width=64, overwrite=True)
    assert validate(out, "cpu") and no_partial_folders(tmp_path)


def test_a_truncated_manifest_still_marks_an_engine_directory(onnx_dir, tmp_path, photos, checkpoint):
    out = Path(shutil.copytree(onnx_dir, tmp_path / "engine"))
    manifest = out / "manifest.json"
    manifest.write_bytes(manifest.read_bytes()[:100])
    assert is_engine_directory(out) and not is_engine_directory(photos)
    # other tools' manifests name a format_version too, even first (a game's resource pack does)
    for text in (f'{{"format": {FORMAT_VERSION}}}', '{\n  "format_version": 2,\n  "header": {"name": "pack"}\n}',
                 f'{{"format_version": {FORMAT_VERSION}, "backend": "onnx", "models": {{}}}}'):
        (photos / "manifest.json").write_text(text)
        assert not is_engine_directory(photos), text
    refused(checkpoint, photos, FileExistsError, "not an rtcore engine directory")


def test_the_cache_never_replaces_a_users_folder(checkpoint, tmp_path, monkeypatch, photos):
    cache = tmp_path / "cache"
    monkeypatch.setenv("RTCORE_CACHE", str(cache))
    key = cache_key(fingerprint(checkpoint), "onnx", torch.float32, None, None, 1, False, None, torch.device("cpu"))
    entry = cache / f"{checkpoint.name}-onnx-{key}"
    shutil.copytree(photos, entry)
    before = tree_digest(entry)
    with pytest.raises(FileExistsError, match="not an rtcore engine directory"):
        cached_build(checkpoint, backend="onnx")
    assert tree_digest(entry) == before and no_partial_folders(cache)


def test_partial_folders_of_live_processes_and_other_hosts_are_kept(tmp_path):
    out = tmp_path / "engine"
    mine = partial_directory(out)  # this process is alive
    other_host = out.with_name(f".engine.building-not-{socket.gethostname()}-{dead_pid()}-0123abcd")
    dead = out.with_name(f".engine.stale-{socket.gethostname()}-{dead_pid()}-0123abcd")
    for folder in (mine, other_host, dead):
        folder.mkdir()
    assert remove_abandoned(tmp_path) == [dead]
    assert mine.is_dir() and other_host.is_dir() and not dead.exists()


def dead_pid():
    """The pid of a process that has exited (and been reaped)."""
    child = subprocess.Popen([sys.executable, "-c", "pass"])
    child.wait()
    return child.pid


@pytest.mark.slow  # two real exports in subprocesses, one of them killed
def test_a_sigkilled_export_leaves_nothing_after_the_next_build(tiny_sd1, tmp_path):
    out = tmp_path / "engine"
    command = [sys.executable, "-m", "rtcore", "export", str(tiny_sd1), "--backend", "onnx", "--height", "64",
               "--width", "64", "--out", str(out)]
    child = subprocess.Popen(command, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        deadline = time.monotonic() + 120
        # wait until the build has written its first model into its partial folder, then kill it outright
        while not list(tmp_path.glob(".engine.building-*/*/model.onnx")):
            assert child.poll() is None, "the export ended before it could be killed"
            assert time.monotonic() < deadline, "the export wrote nothing in 120 s"
            time.sleep(0.05)
        os.kill(child.pid, signal.SIGKILL)
        child.wait(timeout=30)
    finally:
        if child.poll() is None:
            child.kill()
    (partial,) = tmp_path.glob(".engine.building-*")
    assert not out.exists()
    with pytest.raises(FileNotFoundError, match="not an engine directory"):
        validate(partial, "cpu")  # the manifest comes last: a killed build never leaves a directory that loads
    result = subprocess.run(command, capture_output=True, text=True, timeout=300)
    assert result.returncode == 0, result.stderr
    assert validate(out, "cpu") and no_partial_folders(tmp_path)
