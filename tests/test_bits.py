import numpy as np
import pytest
import torch

from maskbit import bits


@pytest.mark.parametrize("num_bits", [1, 5, 10, 12, 14, 16, 18])
def test_indices_bits_round_trip_over_all_codes(num_bits):
    codes = torch.arange(2**num_bits)
    b = bits.indices_to_bits(codes, num_bits)
    assert b.shape == (2**num_bits, num_bits) and b.dtype == torch.float32
    assert set(b.unique().tolist()) <= {-1.0, 1.0}
    assert torch.equal(bits.bits_to_indices(b), codes)


def test_bit_order_is_lsb_first():
    b = bits.indices_to_bits(torch.tensor([1, 2, 2**11]), 12)
    assert b[0].tolist() == [1.0] + [-1.0] * 11  # index 1 = channel 0 set
    assert b[1, 1] == 1 and b[1].sum() == -10
    assert b[2, 11] == 1 and b[2, :11].eq(-1).all()


def test_zero_bit_counts_as_unset():
    assert bits.bits_to_indices(torch.tensor([[0.0, 1.0, -1.0]])).item() == 2


@pytest.mark.parametrize(("num_bits", "num_groups"), [(10, 2), (12, 2), (12, 3), (14, 2), (16, 4), (18, 2), (12, 1)])
def test_groups_round_trip_over_all_codes(num_bits, num_groups):
    codes = torch.arange(2**num_bits)
    groups = bits.split_groups(codes, num_bits, num_groups)
    per = num_bits // num_groups
    assert groups.shape == (2**num_bits, num_groups)
    for g in range(num_groups):  # group g = (index >> g·K/m) & (2^(K/m) − 1)
        assert torch.equal(groups[:, g], (codes >> (g * per)) & (2**per - 1))
    assert torch.equal(bits.combine_groups(groups, num_bits), codes)


def test_group_bits_are_tokenizer_channels():
    codes = torch.randint(0, 2**12, (100,))
    groups = bits.split_groups(codes, 12, 2)
    group_bits = torch.cat([bits.indices_to_bits(groups[:, g], 6) for g in range(2)], dim=-1)
    assert torch.equal(group_bits, bits.indices_to_bits(codes, 12))


def test_flip_bits_everywhere_is_an_involution_at_hamming_one_per_bit():
    indices = torch.randint(0, 2**12, (2, 8, 8))
    for bit in range(12):
        flipped = bits.flip_bits(indices, bit, 12)
        assert torch.equal(bits.hamming(indices, flipped), torch.ones_like(indices))
        assert torch.equal(flipped >> bit & 1, 1 - (indices >> bit & 1))
        assert torch.equal(bits.flip_bits(flipped, bit, 12), indices)
    assert torch.equal(
        bits.hamming(indices, bits.flip_bits(indices, [0, 3, 11], 12), dim=(1, 2)), torch.full((2,), 192)
    )


def test_flip_bits_at_chosen_positions_only():
    indices = torch.randint(0, 2**12, (2, 4, 4))
    flipped = bits.flip_bits(indices, [1, 2], 12, positions=[0, 5])
    changed = (flipped != indices).view(2, -1)
    assert changed[:, [0, 5]].all() and changed.sum() == 4
    mask = torch.zeros(4, 4, dtype=torch.bool)
    mask[1, 1] = True  # row 1, column 1 = flat position 5
    assert torch.equal(bits.flip_bits(indices, [1, 2], 12, positions=mask), bits.flip_bits(indices, [1, 2], 12, [5]))
    original = indices.clone()
    bits.flip_bits(indices, 0, 12)
    assert torch.equal(indices, original)


def test_flip_bits_rejects_bad_arguments():
    indices = torch.zeros(1, 4, 4, dtype=torch.long)
    with pytest.raises(ValueError, match=r"bit ids must be in \[0, 12\)"):
        bits.flip_bits(indices, 12, 12)
    with pytest.raises(ValueError, match="positions must be in"):
        bits.flip_bits(indices, 0, 12, positions=[16])
    with pytest.raises(ValueError, match="position mask"):
        bits.flip_bits(indices, 0, 12, positions=torch.ones(3, 3, dtype=torch.bool))
    with pytest.raises(ValueError, match="indices must be in"):
        bits.flip_bits(torch.full((1, 2), 4096), 0, 12)


def test_hamming_matches_python_popcount():
    a = torch.randint(0, 2**18, (1000,))
    b = torch.randint(0, 2**18, (1000,))
    expected = torch.tensor([bin(int(x) ^ int(y)).count("1") for x, y in zip(a, b)])
    assert torch.equal(bits.hamming(a, b), expected)
    assert bits.hamming(a, b, dim=0).item() == expected.sum().item()


def test_pack_bits_matches_numpy_and_preserves_hamming():
    a = torch.randint(0, 2**12, (3, 8, 8))
    b = torch.randint(0, 2**12, (3, 8, 8))
    pa, pb = bits.pack_bits(a, 12), bits.pack_bits(b, 12)
    assert pa.dtype == torch.uint8 and pa.shape == (3, 8 * 8 * 12 // 8)
    unpacked = np.unpackbits(pa.numpy(), axis=1, bitorder="little")
    assert np.array_equal(unpacked, (bits.indices_to_bits(a, 12).flatten(1) > 0).numpy())
    packed_distance = np.unpackbits(pa.numpy() ^ pb.numpy(), axis=1).sum(1)
    assert np.array_equal(packed_distance, bits.hamming(a, b, dim=(1, 2)).numpy())
    assert bits.pack_bits(torch.tensor([[5]]), 3).tolist() == [[5]]  # padded to a whole byte
