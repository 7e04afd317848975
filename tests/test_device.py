import argparse

import pytest
import torch

from maskbit import SAMPLING_PRESETS, iter_generate
from maskbit.device import (
    add_device_arguments,
    autocast,
    autocast_dtype,
    describe_precision,
    mixed_precision,
    pick_device,
)


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

    for native, expected in ((True, torch.bfloat16), (False, None)):
        monkeypatch.setattr(device, "cpu_has_native_bf16", lambda native=native: native)
        assert autocast_dtype("auto", torch.device("cpu")) is expected
        assert autocast_dtype("auto", torch.device("cuda")) is torch.bfloat16
        assert describe_precision("auto", torch.device("cpu")) == (
            "bf16 (auto: native on this CPU)" if native else "fp32 (auto: no native bf16 on this CPU)"
        )
    monkeypatch.setenv("MASKBIT_PRECISION", "bf16")  # the programs' default, never the library's
    assert autocast_dtype("fp32", torch.device("cpu")) is None
    assert autocast_dtype("bf16", torch.device("cpu")) is torch.bfloat16
    assert autocast_dtype("fp32", torch.device("cuda")) is None
    assert describe_precision("fp32", torch.device("cuda")) == "fp32"
    x = torch.ones(2, 2)
    with autocast(torch.device("cpu"), torch.bfloat16):
        assert (x @ x).dtype is torch.bfloat16
    with autocast(torch.device("cpu"), None):
        assert (x @ x).dtype is torch.float32


def test_the_library_computes_in_float32_unless_bf16_is_asked_for(monkeypatch):
    from maskbit import Generator, Tokenizer, device

    monkeypatch.setattr(device, "cpu_has_native_bf16", lambda: True)
    monkeypatch.setenv("MASKBIT_PRECISION", "bf16")  # read by the programs only
    tokenizer = Tokenizer.from_pretrained("default")
    assert tokenizer.precision == "fp32" and tokenizer.inference("cpu").precision == "fp32"
    assert Generator.from_pretrained("default").precision == "fp32"
    assert Tokenizer.from_pretrained("default", precision="auto").precision == "auto"
    assert tokenizer.inference("cpu", "bf16").precision == "bf16" and tokenizer.inference("cpu").precision == "bf16"
    with pytest.raises(ValueError, match="precision must be one of"):
        tokenizer.precision = "fp16"
    with pytest.raises(ValueError, match="precision must be one of"):
        Tokenizer.from_pretrained("default", precision="half")


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


def test_command_lines_share_device_and_precision_options(monkeypatch, capsys):
    parser = argparse.ArgumentParser()
    add_device_arguments(parser)
    assert vars(parser.parse_args([])) == {"device": "auto", "precision": "auto"}  # the programs run for speed
    assert parser.parse_args(["--precision", "bf16"]).precision == "bf16"
    with pytest.raises(SystemExit):
        parser.parse_args(["--precision", "fp16"])
    monkeypatch.setenv("MASKBIT_PRECISION", "fp32")  # a deployment's default for its programs
    parser = argparse.ArgumentParser()
    add_device_arguments(parser)
    assert parser.parse_args([]).precision == "fp32"
    monkeypatch.setenv("MASKBIT_PRECISION", "fp16")  # a typo in the deployment: a usage error naming both places
    parser = argparse.ArgumentParser()
    add_device_arguments(parser)
    with pytest.raises(SystemExit):
        parser.parse_args([])
    assert "got 'fp16' (from --precision or MASKBIT_PRECISION)" in capsys.readouterr().err
    assert parser.parse_args(["--precision", "bf16"]).precision == "bf16"  # the command line overrides it


def test_the_app_refuses_a_bad_precision_from_its_environment(monkeypatch, capsys):
    from app.settings import parse_settings

    monkeypatch.setenv("MASKBIT_PRECISION", "fp16")
    with pytest.raises(SystemExit):
        parse_settings([])
    assert "got 'fp16' (from --precision or MASKBIT_PRECISION)" in capsys.readouterr().err


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
        tiny_tokenizer.precision = "fp32"
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
        tiny_generator.precision = "fp32"
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


# The official fixture sets: (weights file, stem of its .yaml config and _io.pt outputs, the io key of the image in
# [0, 1], of the images the official code decodes from its indices, and whether those are in [-1, 1]). BitDance's
# weights are rebuilt and its indices regrouped first (tests/test_family.py, which runs under the defaults too).
FIXTURE_SETS = {
    "maskbit": ("official-tiny/tiny_tokenizer.bin", "official-tiny/tiny_tokenizer", "image", "recon", False),
    **{
        name: (f"official-vq-tiny/{file}", f"official-vq-tiny/tiny_{name}", "image", "recon_from_indices", False)
        for name, file in (("vqgan_plus", "tiny_vqgan_plus.bin"), ("maskgit", "tiny_maskgit.bin"))
    },
    "taming": (
        "official-vq-tiny/tiny_taming.ckpt",
        "official-vq-tiny/tiny_taming",
        "image",
        "recon_from_indices",
        False,
    ),
    **{
        name: (
            f"open-magvit2-tiny/tiny_{name}.ckpt",
            f"open-magvit2-tiny/tiny_{name}",
            "image01",
            "decoded_from_indices",
            True,
        )
        for name in ("lfq", "ibq")
    },
}


@pytest.mark.parametrize("name", sorted(FIXTURE_SETS))
def test_the_defaults_give_the_official_numbers_on_a_cpu_with_native_bf16(monkeypatch, name):
    """Where bf16 is native, "auto" would move 2-12 % of the tiny fixtures' indices: the library's defaults never do."""
    from maskbit import Tokenizer, device
    from tests.conftest import FIXTURES

    monkeypatch.setattr(device, "cpu_has_native_bf16", lambda: True)
    assert device.resolve_precision("auto", torch.device("cpu")) == "bf16"
    weights, stem, image, decoded, signed = FIXTURE_SETS[name]
    io = torch.load(FIXTURES / f"{stem}_io.pt", weights_only=True)
    tokenizer = Tokenizer.from_pretrained(FIXTURES / weights, config=FIXTURES / f"{stem}.yaml")
    # VQ: where the nearest code is clear (test_vq_tokenizers.py); every position of the others
    clear = io["argmin_margin"] > 1e-4 if "argmin_margin" in io else torch.ones_like(io["indices"], dtype=torch.bool)
    assert torch.equal(tokenizer.encode(io[image])[clear], io["indices"][clear])
    images = tokenizer.decode(io["indices"])
    assert ((images * 2 - 1 if signed else images) - io[decoded]).abs().max() <= 2e-3  # in the official range


def test_the_sampler_defaults_to_the_official_forward_on_a_cpu_with_native_bf16(monkeypatch):
    """Each forward pass the sampler makes equals the plain float32 forward (test_generator: the official logits)."""
    from maskbit import Generator, device
    from tests.conftest import OFFICIAL_TINY

    monkeypatch.setattr(device, "cpu_has_native_bf16", lambda: True)
    generator = Generator.from_pretrained(OFFICIAL_TINY / "tiny_generator.bin", OFFICIAL_TINY / "tiny_generator.yaml")
    calls = []
    hook = generator.register_forward_hook(lambda module, args, out: calls.append((args, out)))
    try:
        list(iter_generate(generator, [3, 7], "tiny", seed=0))
    finally:
        hook.remove()
    assert len(calls) == SAMPLING_PRESETS["tiny"].num_steps
    for args, out in calls:
        assert out.dtype == torch.float32 and torch.equal(out, generator(*args))
