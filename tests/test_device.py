import pytest
import torch

from maskbit.device import autocast, autocast_dtype, pick_device


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


def test_auto_precision_is_bf16_on_cuda_and_fp32_on_the_cpu():
    assert autocast_dtype("auto", torch.device("cpu")) is None
    assert autocast_dtype("auto", torch.device("cuda")) is torch.bfloat16
    assert autocast_dtype("bf16", torch.device("cpu")) is torch.bfloat16
    assert autocast_dtype("fp32", torch.device("cuda")) is None
    x = torch.ones(2, 2)
    with autocast(torch.device("cpu"), torch.bfloat16):
        assert (x @ x).dtype is torch.bfloat16
    with autocast(torch.device("cpu"), None):
        assert (x @ x).dtype is torch.float32
