import dataclasses
import math

import pytest
import torch

from maskbit import Generator, GeneratorConfig, SamplingConfig, Tokenizer, generate, iter_generate
from maskbit.presets import SAMPLING_PRESETS, TOKENIZER_PRESETS
from maskbit.sampling import guidance_weight, mask_ratio, masked_counts, sampling_step
from tests.conftest import OFFICIAL_TINY

OFFICIAL_PRESETS = [name for name in SAMPLING_PRESETS if name.startswith("maskbit_generator_")]


@pytest.fixture(scope="module")
def grid16_generator() -> Generator:
    """Random weights, the released token layout: 16×16 positions × 2 groups = 512 maskable entries, K = 12."""
    torch.manual_seed(0)
    config = GeneratorConfig(token_size=12, grid_size=16, hidden_dim=32, depth=1, heads=2, mlp_dim=64, num_classes=10)
    return Generator(config).eval()


def spec_counts(sampling: SamplingConfig, total: int = 512) -> list[int]:
    """Spec §3 step g, restated: masked entries before each step."""
    counts = [total]
    for i in range(sampling.num_steps - 1):
        progress = (i + 1) / sampling.num_steps
        ratio = min(max(math.acos(progress) / (math.pi / 2), 1e-6), 1.0)
        counts.append(max(1, min(counts[-1] - 1, math.floor(ratio * total))))
    return counts


def test_spec_example_counts_for_the_12bit_preset():
    counts = masked_counts(SAMPLING_PRESETS["maskbit_generator_12bit"], 512)
    assert counts[:3] == [512, 506, 501] and counts[-3:] == [100, 81, 57]


@pytest.mark.parametrize("preset", OFFICIAL_PRESETS)
def test_per_step_masked_counts_follow_the_spec_for_every_official_preset(grid16_generator, preset):
    sampling = SAMPLING_PRESETS[preset]
    before = [512]
    for state in iter_generate(grid16_generator, [1, 2], sampling, seed=0):
        counts = state.mask.flatten(1).sum(1)
        assert counts[0] == counts[1]
        before.append(int(counts[0]))
        if state.is_last:
            assert not (state.prediction == grid16_generator.config.mask_token).any()
    assert before[:-1] == spec_counts(sampling) == masked_counts(sampling, 512)


def test_decided_entries_never_change_and_the_mask_only_shrinks(grid16_generator):
    mask_token = grid16_generator.config.mask_token
    previous = None
    for state in iter_generate(grid16_generator, [0, 3, 5], "maskbit_generator_12bit", seed=1):
        decided = state.tokens != mask_token
        assert torch.equal(state.prediction[decided], state.tokens[decided])
        if previous is not None:
            assert torch.equal(state.prediction[previous != mask_token], previous[previous != mask_token])
            assert (state.mask.sum() <= (previous == mask_token).sum()).item()
            assert not (state.mask & (previous != mask_token)).any()
        previous = state.tokens
    assert state.is_last and (state.prediction < mask_token).all()


def test_same_seed_same_output_and_different_seeds_differ(grid16_generator):
    sampling = SamplingConfig(num_steps=6, guidance_scale=2.0)

    def final(seed):
        return list(iter_generate(grid16_generator, [1, 2], sampling, seed=seed))[-1].prediction

    assert torch.equal(final(7), final(7))
    assert not torch.equal(final(7), final(8))


def official_rule_loop(generator: Generator, labels: torch.Tensor, sampling: SamplingConfig, rng: torch.Generator):
    """Spec §3 as written (one masked count from sample 0, one threshold rule), drawing randomness in our order."""
    c = generator.config
    b, m_total = len(labels), c.num_positions * c.num_groups
    tokens = torch.full((b, c.num_positions, c.num_groups), c.mask_token)
    trajectory = []
    for i in range(sampling.num_steps):
        progress = (i + 1) / sampling.num_steps
        scale = guidance_weight(i, sampling)
        if scale == 0:
            logits = generator(tokens, labels, torch.zeros(b, dtype=torch.bool))
        else:
            both = generator(torch.cat([tokens, tokens]), torch.cat([labels, labels]), torch.arange(2 * b) >= b)
            logits = both[:b] + scale * (both[:b] - both[b:])
        probs = torch.softmax(logits / sampling.softmax_temperature, -1)
        sampled = torch.multinomial(probs.view(-1, probs.shape[-1]), 1, generator=rng).view(tokens.shape)
        unknown = tokens == c.mask_token
        num_masked = int(unknown[0].sum())
        pred = torch.where(unknown, sampled, tokens)
        confidence = torch.gather(probs, -1, pred.clamp_max(c.mask_token - 1)[..., None])[..., 0]
        confidence = torch.where(unknown, confidence, torch.inf)
        gumbel = -torch.log(-torch.log(torch.rand(confidence.shape, generator=rng).clamp(1e-20, 1.0)))
        confidence = torch.log(confidence) + gumbel * sampling.randomize_temperature * (1 - progress)
        ratio = mask_ratio(progress, sampling.mask_schedule)
        mask_len = max(1, min(num_masked - 1, math.floor(ratio * m_total)))
        threshold = torch.sort(confidence.view(b, -1), dim=-1).values[:, mask_len - 1 : mask_len]
        remask = confidence <= threshold[:, :, None]
        tokens = torch.where(remask, c.mask_token, pred)
        trajectory.append(pred)
    return trajectory


@pytest.mark.parametrize("preset", ["maskbit_generator_12bit", "demo"])
def test_identical_to_the_official_rule_when_counts_agree(grid16_generator, preset):
    sampling = dataclasses.replace(SAMPLING_PRESETS[preset], num_steps=12)
    labels = torch.tensor([1, 4, 9])
    ours = [
        s.prediction for s in iter_generate(grid16_generator, labels, sampling, rng=torch.Generator().manual_seed(3))
    ]
    reference = official_rule_loop(grid16_generator, labels, sampling, torch.Generator().manual_seed(3))
    assert all(torch.equal(a, b) for a, b in zip(ours, reference, strict=True))


def test_no_unconditional_forward_when_the_guidance_scale_is_zero(grid16_generator):
    batch_sizes = []
    hook = grid16_generator.register_forward_hook(lambda module, args, output: batch_sizes.append(args[0].shape[0]))
    try:
        list(iter_generate(grid16_generator, [1, 2], SamplingConfig(num_steps=4, guidance_annealing="cosine"), seed=0))
        assert batch_sizes == [2, 4, 4, 4]  # cosine annealing: scale 0 at step 0, then cond + uncond in one batch
        batch_sizes.clear()
        list(iter_generate(grid16_generator, [1, 2], SamplingConfig(num_steps=4, guidance_scale=0.0), seed=0))
        assert batch_sizes == [2, 2, 2, 2]
    finally:
        hook.remove()


def test_each_sample_keeps_its_own_masked_count():
    """Samples with different numbers of masked entries each re-mask by their own count."""
    sampling = SamplingConfig(num_steps=64, randomize_temperature=0.0)
    mask_token, n, m, v = 64, 256, 2, 64
    tokens = torch.zeros(2, n, m, dtype=torch.long)
    tokens.view(2, -1)[0, :10] = mask_token  # sample 0: 10 masked entries
    tokens.view(2, -1)[1, :300] = mask_token  # sample 1: 300 masked entries
    logits = torch.randn(2, n, m, v)
    prediction, remasked = sampling_step(tokens, logits, 0, sampling, mask_token, torch.Generator().manual_seed(0))
    target = math.floor(mask_ratio(1 / 64, "arccos") * 512)  # 506
    assert (remasked == mask_token).flatten(1).sum(1).tolist() == [9, min(299, target)]
    assert torch.equal(prediction[tokens != mask_token], tokens[tokens != mask_token])


@pytest.mark.parametrize("schedule", ["arccos", "cosine", "linear", "square", "root"])
def test_mask_schedules_decrease_from_one_to_the_floor(schedule):
    ratios = [mask_ratio(p / 100, schedule) for p in range(1, 101)]
    assert all(a >= b for a, b in zip(ratios, ratios[1:]))
    assert ratios[-1] == 1e-6 and mask_ratio(1e-9, schedule) == pytest.approx(1.0, abs=1e-4)


def test_guidance_annealing():
    sampling = SamplingConfig(num_steps=10, guidance_scale=4.0, scale_pow=1.0)
    assert guidance_weight(0, sampling) == 0.0 and guidance_weight(5, sampling) == pytest.approx(2.0)
    linear = SamplingConfig(num_steps=10, guidance_scale=4.0, guidance_annealing="linear")
    assert guidance_weight(5, linear) == pytest.approx(2.0)
    assert guidance_weight(0, SamplingConfig(guidance_annealing="none", guidance_scale=3.0)) == 3.0


def test_generate_returns_clamped_images(tiny_tokenizer, tiny_generator):
    images = generate(tiny_generator, tiny_tokenizer, [1, 2], "tiny", seed=0)
    assert images.shape == (2, 3, 32, 32) and images.min() >= 0 and images.max() <= 1
    assert torch.equal(images, generate(tiny_generator, tiny_tokenizer, [1, 2], "tiny", seed=0))


def test_generate_rejects_bad_input(tiny_tokenizer, tiny_generator, grid16_generator):
    with pytest.raises(ValueError, match=r"class ids must be in \[0, 1000\)"):
        generate(tiny_generator, tiny_tokenizer, [1000], "tiny")
    with pytest.raises(ValueError, match="at least one class id"):
        generate(tiny_generator, tiny_tokenizer, [], "tiny")
    with pytest.raises(ValueError, match="unknown sampling preset"):
        generate(tiny_generator, tiny_tokenizer, [1], "fast")
    mismatched = Generator(GeneratorConfig(token_size=10, grid_size=8, hidden_dim=32, depth=1, heads=2, mlp_dim=64))
    with pytest.raises(ValueError, match="12-bit tokens but the generator expects 10-bit"):
        generate(mismatched, tiny_tokenizer, [1], "tiny")
    vq = Tokenizer(TOKENIZER_PRESETS["tiny_vqgan_plus"])  # 12-bit VQ tokens: the bit count fits, the kind does not
    with pytest.raises(ValueError, match="a MaskBit generator predicts bit tokens.*this tokenizer is vector-quantised"):
        generate(tiny_generator, vq, [1], "tiny")


def test_default_sampling_is_the_generators_own(tmp_path, tiny_generator):
    import dataclasses
    import json

    from maskbit import SAMPLING_PRESETS, SamplingConfig
    from maskbit.checkpoint import default_sampling
    from maskbit.official import read_official_yaml

    assert default_sampling("default") == SAMPLING_PRESETS["default"]  # stored with the bundled model
    assert default_sampling("markweber/maskbit_generator_14bit") == SAMPLING_PRESETS["maskbit_generator_14bit"]
    assert default_sampling("weights/maskbit_generator_10bit.bin") == SAMPLING_PRESETS["maskbit_generator_10bit"]
    assert default_sampling("some.bin", "maskbit_generator_16bit") == SAMPLING_PRESETS["maskbit_generator_16bit"]
    assert default_sampling(tmp_path / "nothing.bin") == SamplingConfig()
    # an official YAML's own sampling keys (model.mlm_model), as the official code samples with them
    yaml_sampling = SamplingConfig(8, 2.0, "cosine", 3.0, 4.5, 1.0, "arccos")
    tiny = OFFICIAL_TINY / "tiny_generator.bin"
    assert default_sampling(tiny, OFFICIAL_TINY / "tiny_generator.yaml") == yaml_sampling
    assert default_sampling(tiny, read_official_yaml(OFFICIAL_TINY / "tiny_generator.yaml")) == yaml_sampling
    own = SamplingConfig(5, 1.5, "linear", 2.0, 3.0, 0.9, "root")
    tiny_generator.save_pretrained(tmp_path / "saved", sampling=own)
    assert default_sampling(tmp_path / "saved") == own
    run = tmp_path / "run"  # a training run: config.json with its sampling, the exported model in model/
    tiny_generator.save_pretrained(run / "model")
    run_sampling = SamplingConfig(7, 2.0, "none", 1.0, 1.0, 1.0, "cosine")
    (run / "config.json").write_text(json.dumps({"stage": "generator", "sampling": dataclasses.asdict(run_sampling)}))
    assert default_sampling(run / "model") == run_sampling
