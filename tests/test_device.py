import argparse

import pytest
import torch

from maskbit import SAMPLING_PRESETS, iter_generate
from maskbit.device import add_device_arguments, autocast, autocast_dtype, mixed_precision, pick_device


def test_auto_picks_cuda_only_when_there_is_one():
    assert pick_device("auto").type == ("cuda" if torch.cuda.is_available() else "cpu")
    assert pick_device("cpu") == torch.device("cpu")
    assert pick_device(torch.device("cpu")) == torch.device("cpu")


@pytest.mark.skipif(torch.cuda.is_available(), reason="checks the message on machines without a GPU")
def test_cuda_without_a_gpu_says_so():
    with pytest.raises(ValueError, match="no CUDA device"):
        pick_device("cuda")


def test_bad_names_are_refused():
    with pytest.raises(ValueError, match="device must be one of"):
        pick_device("tpu")
    with pytest.raises(ValueError, match="precision must be one of"):
        autocast_dtype("fp8", torch.device("cpu"))


def test_bf16_on_a_cpu_without_native_bf16_warns_that_it_is_slower(monkeypatch):
    import warnings

    from maskbit import device

    for native in (True, False):
        monkeypatch.setattr(device, "cpu_has_native_bf16", lambda native=native: native)
        with warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter("always")
            assert autocast_dtype("bf16", torch.device("cpu")) is torch.bfloat16
            autocast_dtype("auto", torch.device("cpu"))
        assert [str(w.message)[:30] for w in caught] == ([] if native else ["this CPU has no native bf16 (n"])


def test_auto_precision_is_bf16_on_cuda_and_on_a_cpu_with_native_bf16(monkeypatch):
    from maskbit import device

    monkeypatch.delenv("MASKBIT_PRECISION")  # the suite's fp32 (conftest.py)
    for native, expected in ((True, torch.bfloat16), (False, None)):
        monkeypatch.setattr(device, "cpu_has_native_bf16", lambda native=native: native)
        assert autocast_dtype("auto", torch.device("cpu")) is expected
        assert autocast_dtype("auto", torch.device("cuda")) is torch.bfloat16
    monkeypatch.setenv("MASKBIT_PRECISION", "fp32")
    assert autocast_dtype("auto", torch.device("cuda")) is None
    monkeypatch.setenv("MASKBIT_PRECISION", "fp16")
    with pytest.raises(ValueError, match="MASKBIT_PRECISION must be one of"):
        autocast_dtype("auto", torch.device("cpu"))
    assert autocast_dtype("bf16", torch.device("cpu")) is torch.bfloat16
    assert autocast_dtype("fp32", torch.device("cuda")) is None
    x = torch.ones(2, 2)
    with autocast(torch.device("cpu"), torch.bfloat16):
        assert (x @ x).dtype is torch.bfloat16
    with autocast(torch.device("cpu"), None):
        assert (x @ x).dtype is torch.float32


def test_training_precision_auto_is_bf16_on_cuda_and_on_a_cpu_with_native_bf16(monkeypatch):
    from maskbit import device

    for native, expected in ((True, "bf16"), (False, "no")):
        monkeypatch.setattr(device, "cpu_has_native_bf16", lambda native=native: native)
        assert mixed_precision("auto", torch.device("cpu")) == expected
    assert mixed_precision("auto", torch.device("cuda")) == "bf16"
    assert (
        mixed_precision("bf16", torch.device("cpu")) == "bf16" and mixed_precision("no", torch.device("cuda")) == "no"
    )
    with pytest.raises(ValueError, match="mixed precision must be one of"):
        mixed_precision("fp8", torch.device("cpu"))


def test_command_lines_share_device_and_precision_options():
    parser = argparse.ArgumentParser()
    add_device_arguments(parser)
    assert vars(parser.parse_args([])) == {"device": "auto", "precision": "auto"}
    assert parser.parse_args(["--precision", "bf16"]).precision == "bf16"
    with pytest.raises(SystemExit):
        parser.parse_args(["--precision", "fp16"])


def test_the_tokenizer_encodes_and_decodes_at_its_precision(tiny_tokenizer):
    images = torch.rand(2, 3, 32, 32, generator=torch.Generator().manual_seed(0))
    dtypes = []
    hook = tiny_tokenizer.decoder.conv_in.register_forward_hook(lambda m, a, out: dtypes.append(out.dtype))
    try:
        exact = tiny_tokenizer.encode(images)
        decoded = tiny_tokenizer.decode(exact)
        tiny_tokenizer.precision = "bf16"
        approx = tiny_tokenizer.encode(images)
        decoded_bf16 = tiny_tokenizer.decode(exact)
    finally:
        tiny_tokenizer.precision = "auto"
        hook.remove()
    assert dtypes == [torch.float32, torch.bfloat16]
    assert decoded_bf16.dtype == torch.float32 and (decoded_bf16 - decoded).abs().max() < 0.1
    flipped = ((exact ^ approx)[..., None] >> torch.arange(12)) & 1
    assert flipped.float().mean() < 0.02  # bf16 moves only latents next to zero across the sign


def test_the_sampler_runs_at_the_generator_precision_unless_told_otherwise(tiny_generator):
    dtypes = []
    hook = tiny_generator.prediction_layer.register_forward_hook(lambda m, a, out: dtypes.append(out.dtype))
    try:
        list(iter_generate(tiny_generator, [1], "tiny", seed=0))
        tiny_generator.precision = "bf16"
        states = list(iter_generate(tiny_generator, [1], "tiny", seed=0))
        list(iter_generate(tiny_generator, [1], "tiny", seed=0, precision="fp32"))
    finally:
        tiny_generator.precision = "auto"
        hook.remove()
    steps = SAMPLING_PRESETS["tiny"].num_steps
    assert dtypes == [torch.float32] * steps + [torch.bfloat16] * steps + [torch.float32] * steps
    assert (states[-1].prediction < tiny_generator.config.mask_token).all()


BUSY = "print('spinning', flush=True)\nwhile True: pass"  # says when it computes, whatever the load


@pytest.fixture
def busy_cores():
    """One CPU-bound process per core this process may use (as another user's jobs would be)."""
    import subprocess
    import sys
    import time

    from maskbit.device import usable_cores

    processes = [subprocess.Popen([sys.executable, "-c", BUSY], stdout=subprocess.PIPE) for _ in range(usable_cores())]
    for process in processes:
        process.stdout.readline()  # its loop has started
    time.sleep(0.1)  # and is on a core
    yield
    for process in processes:
        process.kill()
        process.wait()


def test_threads_fit_the_load_and_a_cap_or_a_fixed_count_is_kept(busy_cores, monkeypatch):
    from maskbit.device import cpu_threads, fit_threads, usable_cores

    previous = torch.get_num_threads()
    try:
        assert cpu_threads() == 1  # every core has another process's task on it
        assert fit_threads("cpu") == 1 and torch.get_num_threads() == 1
        assert fit_threads("cuda") == 0 and torch.get_num_threads() == 1  # nothing changed off the CPU
        monkeypatch.setenv("MASKBIT_THREADS", "3")
        assert fit_threads("cpu") == 3 and torch.get_num_threads() == 3
        monkeypatch.delenv("MASKBIT_THREADS")
        monkeypatch.setenv("OMP_NUM_THREADS", "1")
        assert usable_cores() == 1
    finally:
        torch.set_num_threads(previous)


def test_background_work_runs_one_thread_at_a_lower_priority():
    import os
    import threading

    from maskbit.device import BACKGROUND_NICE, fit_threads, run_in_background

    seen = {}

    def background():
        run_in_background()
        seen["threads"] = fit_threads("cpu")
        stat = open(f"/proc/self/task/{threading.get_native_id()}/stat").read().rpartition(")")[2].split()
        seen["nice"] = int(stat[16])  # field 19 of stat: nice

    previous = torch.get_num_threads()
    worker = threading.Thread(target=background)
    worker.start()
    worker.join()
    torch.set_num_threads(previous)
    assert seen == {"threads": 1, "nice": min(19, os.getpriority(os.PRIO_PROCESS, 0) + BACKGROUND_NICE)}
