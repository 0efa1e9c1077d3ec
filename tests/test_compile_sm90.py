"""The sm_90 ahead-of-time compile check (bench/compile_sm90.py) runs, and finds no spills, for one kernel here;
``python -m rtcore.bench.compile_sm90`` checks them all (about 10 s on 2 cores)."""

import os
import subprocess
import sys


def test_one_kernel_compiles_for_sm90_without_spills():
    env = {k: v for k, v in os.environ.items() if k != "TRITON_INTERPRET"}  # compiled, not interpreted
    run = subprocess.run([sys.executable, "-m", "rtcore.bench.compile_sm90", "--only", "int8_matmul"], env=env,
                         capture_output=True, text=True, timeout=120)
    assert run.returncode == 0, run.stdout + run.stderr
    row = next(line for line in run.stdout.splitlines() if line.startswith("| int8_matmul"))
    kernel, registers, stores, loads, warps = (cell.strip() for cell in row.strip("|").split("|"))
    assert 0 < int(registers) <= 255 and stores == loads == "0"
