"""`keep_freed_memory`: freed tensors are reused instead of faulted in again (counted, not timed)."""

from __future__ import annotations

import json
import platform
import subprocess
import sys

import pytest

from iris_engine.allocator import OPT_OUT_VARIABLE, AllocatorConfig, keep_freed_memory

glibc_only = pytest.mark.skipif(platform.libc_ver()[0] != "glibc", reason="mallopt thresholds are glibc's")

FAULTS_OF_REPEATED_ALLOCATION = """
import json, resource, sys
import torch
from iris_engine.allocator import keep_freed_memory
kept = sys.argv[1] == "kept" and keep_freed_memory()
torch.ones(16 * 2**20)  # 64 MiB, allocated and freed once before counting
before = resource.getrusage(resource.RUSAGE_SELF).ru_minflt
for _ in range(30):
    torch.ones(16 * 2**20)
print(json.dumps({"kept": kept, "faults": resource.getrusage(resource.RUSAGE_SELF).ru_minflt - before}))
"""


def _faults(setting: str) -> dict:
    done = subprocess.run([sys.executable, "-c", FAULTS_OF_REPEATED_ALLOCATION, setting], capture_output=True,
                          text=True, check=True)
    return json.loads(done.stdout.strip().splitlines()[-1])


@glibc_only
def test_freed_tensors_are_reused_instead_of_faulted_in_again():
    default, kept = _faults("default"), _faults("kept")
    assert kept["kept"] and not default["kept"]
    assert default["faults"] > 30 * 16 * 2**20 * 4 // 4096 // 2  # each 64 MiB tensor mapped and faulted in anew
    assert kept["faults"] < default["faults"] / 3  # reused, once the heap has grown to hold a few of them


@glibc_only
def test_the_thresholds_are_set_here():
    assert keep_freed_memory(AllocatorConfig())


@pytest.mark.parametrize("size", [0, -1, 2**31])
def test_thresholds_outside_a_c_int_are_refused(size):
    with pytest.raises(ValueError, match="C int"):
        AllocatorConfig(mmap_threshold_bytes=size)
    with pytest.raises(ValueError, match="C int"):
        AllocatorConfig(trim_threshold_bytes=size)


def test_the_opt_out_variable_leaves_the_allocator_alone(monkeypatch):
    monkeypatch.setenv(OPT_OUT_VARIABLE, "1")
    assert not keep_freed_memory()


def test_the_iris_command_sets_the_allocator_first(monkeypatch, tmp_path):
    from iris_engine import cli

    calls = []
    monkeypatch.setattr(cli, "keep_freed_memory", lambda: calls.append(True))
    assert cli.main(["segment", "--input", str(tmp_path / "missing"), "--output", str(tmp_path)]) == 2
    assert calls == [True]
