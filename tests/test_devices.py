"""Devices: picked, described, out-of-memory recognised, and decoding threads kept to one torch thread."""

from __future__ import annotations

import pytest
import torch

from tl_core.devices import amp_dtype, describe_device, device_info, needs_grad_scaler, pick_device


def test_cpu_is_picked_and_described_when_there_is_no_gpu():
    if torch.cuda.is_available() or torch.backends.mps.is_available():
        pytest.skip("a GPU is present")
    device = pick_device()
    assert device.type == "cpu" and amp_dtype(device) is None
    info = device_info(device)
    assert info.kind == "cpu" and "threads" in info.name
    assert describe_device(device).startswith("CPU: ") and "mixed precision" in describe_device(device)


def test_explicit_requests_win_or_fail_clearly():
    assert pick_device("cpu").type == "cpu"
    if not torch.cuda.is_available():
        with pytest.raises(RuntimeError, match="no CUDA GPU"):
            pick_device("cuda")
    assert needs_grad_scaler(torch.float16) and not needs_grad_scaler(torch.bfloat16)


def test_out_of_memory_is_recognised_on_cpu_too():
    from tl_core.devices import is_out_of_memory

    with pytest.raises(RuntimeError) as failed:
        torch.empty(2**62, dtype=torch.uint8)  # more than any address space: a real CPU allocation failure
    assert not isinstance(failed.value, torch.OutOfMemoryError)  # a plain RuntimeError, unlike CUDA's
    assert is_out_of_memory(failed.value)
    assert is_out_of_memory(torch.OutOfMemoryError("CUDA out of memory. Tried to allocate 2.00 GiB"))
    assert is_out_of_memory(MemoryError())
    assert not is_out_of_memory(RuntimeError("mat1 and mat2 shapes cannot be multiplied"))


def test_decoding_threads_run_torch_on_one_thread_and_leave_the_rest_alone():
    from concurrent.futures import ThreadPoolExecutor

    from tl_core.devices import single_threaded_torch

    if "OpenMP" not in torch.__config__.parallel_info():
        pytest.skip("this torch has no OpenMP runtime: nothing to set")
    before = torch.get_num_threads()
    with ThreadPoolExecutor(1, initializer=single_threaded_torch) as pool:
        assert pool.submit(torch.get_num_threads).result() == 1
    assert torch.get_num_threads() == before
