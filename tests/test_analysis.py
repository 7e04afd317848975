"""maskbit.analysis against independent computations: a direct decode, the lpips package, numpy counts."""

import lpips
import numpy as np
import pytest
import torch

from maskbit import analysis, bits


def test_flips_decode_each_flipped_grid_and_measure_it(tiny_tokenizer):
    from indexes.lpips_embedding import LPIPSEmbedding

    image = torch.rand(3, 32, 32, generator=torch.Generator().manual_seed(0))
    indices = tiny_tokenizer.encode(image[None])[0]
    embedding = LPIPSEmbedding("alex")
    flips = analysis.flip_each_bit(tiny_tokenizer, indices, [1, 7], [0, 9, 63, 9], embedding)
    assert flips.bit_ids == [1, 7] and flips.num_positions == 3 and flips.flipped.shape == (2, 3, 32, 32)
    recon = tiny_tokenizer.decode(indices[None]).clamp(0, 1)
    flipped = tiny_tokenizer.decode(bits.flip_bits(indices[None], 7, 12, [0, 9, 63])).clamp(0, 1)
    assert torch.allclose(flips.reconstruction, recon[0], atol=1e-5)
    assert torch.allclose(flips.flipped[1], flipped[0], atol=1e-5)  # decoded in a batch of 3, here alone
    mse = (flipped - recon).pow(2).mean()
    assert flips.distances.psnr[1] == pytest.approx(float(10 * torch.log10(1 / mse)), rel=1e-4)
    assert flips.distances.l2[1] == pytest.approx(float((flipped - recon).norm()), rel=1e-4)
    reference = embedding.lpips  # the lpips package's own forward, on the same network
    assert isinstance(reference, lpips.LPIPS)
    expected = reference(flipped * 2 - 1, recon * 2 - 1).item()
    assert flips.distances.lpips[1] == pytest.approx(expected, rel=1e-3, abs=1e-5)


def test_flipping_every_bit_by_default_and_a_position_mask(tiny_tokenizer):
    indices = torch.randint(0, 4096, (8, 8), generator=torch.Generator().manual_seed(1))
    flips = analysis.flip_each_bit(tiny_tokenizer, indices)
    assert flips.bit_ids == list(range(12)) and flips.num_positions == 64 and flips.distances.lpips is None
    mask = torch.zeros(8, 8, dtype=torch.bool)
    mask[2, 3] = True
    one = analysis.flip_each_bit(tiny_tokenizer, indices, [4], mask)
    assert one.num_positions == 1
    assert torch.allclose(one.flipped[0], analysis.flip_each_bit(tiny_tokenizer, indices, [4], [19]).flipped[0])


def test_identical_images_have_infinite_psnr():
    image = torch.rand(3, 8, 8)
    found = analysis.distances(torch.stack([image, 1 - image]), image)
    assert found.psnr[0] == np.inf and found.l2[0] == 0 and np.isfinite(found.psnr[1])


def test_a_walk_flips_exactly_r_new_bits_per_step(tiny_tokenizer):
    indices = torch.randint(0, 4096, (8, 8), generator=torch.Generator().manual_seed(2))
    walk = analysis.hamming_walk(tiny_tokenizer, indices, bits_per_step=7, num_steps=5, seed=3)
    assert walk.hamming == [0, 7, 14, 21, 28, 35] and torch.equal(walk.indices[0], indices)
    order = torch.randperm(64 * 12, generator=torch.Generator().manual_seed(3))
    for step, grid in enumerate(walk.indices):
        flipped = torch.zeros(64 * 12, dtype=torch.long)
        flipped[order[: 7 * step]] = 1
        assert torch.equal(grid, indices ^ (flipped.view(64, 12) << torch.arange(12)).sum(1).view(8, 8))
        assert int(bits.hamming(grid, indices, dim=(0, 1))) == 7 * step
    assert walk.distances.psnr[0] == np.inf and walk.images.shape == (6, 3, 32, 32)
    with pytest.raises(ValueError, match="between 1 and the image's 768 bits"):
        analysis.hamming_walk(tiny_tokenizer, indices, bits_per_step=100, num_steps=8, seed=0)


def test_bit_planes_are_the_bits_of_each_index():
    indices = torch.tensor([[0, 5], [4095, 1024]])
    planes = analysis.bit_planes(indices, 12)
    assert planes.shape == (12, 2, 2)
    assert planes[:, 0, 1].tolist() == [True, False, True] + [False] * 9
    assert planes[:, 1, 0].all() and planes[10, 1, 1] and planes[:, 1, 1].sum() == 1


def test_token_statistics_against_numpy():
    tokens = np.random.default_rng(0).integers(0, 4096, size=(20, 8, 8))
    stats = analysis.token_statistics(tokens, 12)
    flat = tokens.reshape(-1)
    for k in (0, 5, 11):
        p = ((flat >> k) & 1).mean()
        assert stats.bit_usage[k] == pytest.approx(p)
        assert stats.bit_entropy[k] == pytest.approx(-(p * np.log2(p) + (1 - p) * np.log2(1 - p)))
    _, counts = np.unique(flat, return_counts=True)
    assert stats.images == 20 and stats.codes_used == len(counts) and stats.code_counts.sum() == flat.size
    assert list(stats.code_counts) == sorted(counts, reverse=True)
    q = counts / counts.sum()
    assert stats.code_entropy == pytest.approx(-(q * np.log2(q)).sum())
    assert stats.perplexity == pytest.approx(2**stats.code_entropy) and stats.code_usage == len(counts) / 4096
    constant = analysis.token_statistics(np.zeros((3, 2, 2), dtype=np.int64), 12)
    assert constant.bit_entropy.max() == 0 and constant.codes_used == 1 and constant.perplexity == 1


def test_the_atlas_shows_every_code_once_with_one_bit_between_neighbouring_cells(tiny_tokenizer):
    atlas = analysis.code_atlas(tiny_tokenizer, half_bits=3, base=0b101 << 6, grid=4, crop=2)
    codes = atlas.codes
    assert codes.shape == (8, 8) and sorted((codes & 63).flatten().tolist()) == list(range(64))
    assert ((codes >> 6) == 0b101).all() and atlas.base == 0b101 << 6
    assert (bits.hamming(codes[:, 1:], codes[:, :-1]) == 1).all()  # side by side: one bit apart
    assert (bits.hamming(codes[1:], codes[:-1]) == 1).all()
    f = tiny_tokenizer.downsample_factor
    assert atlas.cell == 2 * f and atlas.image.shape == (3, 8 * 2 * f, 8 * 2 * f)
    r, c = 5, 2
    uniform = torch.full((1, 4, 4), int(codes[r, c]))
    expected = tiny_tokenizer.decode(uniform).clamp(0, 1)[0, :, f : 3 * f, f : 3 * f]
    cell = atlas.image[:, r * 2 * f : (r + 1) * 2 * f, c * 2 * f : (c + 1) * 2 * f]
    assert torch.allclose(cell, expected, atol=1e-5)
    with pytest.raises(ValueError, match="half_bits must be in"):
        analysis.code_atlas(tiny_tokenizer, half_bits=7)


def test_distances_to_one_reference_or_each_its_own():
    images, references = torch.rand(5, 3, 8, 8), torch.rand(5, 3, 8, 8)
    one, own = analysis.distances(images, references[0]), analysis.distances(images, references)
    for i in range(5):
        assert own.l2[i] == pytest.approx(float((images[i] - references[i]).norm()), rel=1e-5)
        assert one.l2[i] == pytest.approx(float((images[i] - references[0]).norm()), rel=1e-5)
    embed = lambda x: x.flatten(1)  # noqa: E731  (squared L2 in pixel space as a stand-in embedding)
    paired = analysis.distances(images, references, embed, batch_size=2)
    assert np.allclose(paired.lpips, (images - references).flatten(1).pow(2).sum(1).numpy(), rtol=1e-5)


def test_random_token_masks_set_exactly_count_tokens_per_grid():
    mask = analysis.random_token_mask((6, 4, 4), 3, torch.Generator().manual_seed(0))
    assert mask.shape == (6, 4, 4) and mask.flatten(1).sum(1).tolist() == [3] * 6
    assert len({tuple(m.flatten().tolist()) for m in mask}) > 1  # different tokens in different grids
    with pytest.raises(ValueError, match="between 1 and the grid's 16 tokens"):
        analysis.random_token_mask((1, 4, 4), 17, torch.Generator())
