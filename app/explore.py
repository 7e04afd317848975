"""The Generate and Bit flips tabs' endpoints, and the model panel's: one method per user action, named and
parametrised in the library's vocabulary.

Each method checks its inputs (app/validation.py), calls the library (maskbit.analysis, maskbit.sampling), and
returns what its widgets show: images as uint8 arrays, plotly figures (app/figures.py), text and dicts. They run
without a server (tests call them directly); app/layout.py wires them to widgets under the same `api_name`s.
"""

from __future__ import annotations

import gradio as gr
import numpy as np

from app import figures, pictures
from app.endpoint import Endpoints, gpu, guarded
from app.models import BUNDLED_PAIRS, OFFICIAL_PAIRS, Models, generate_steps
from app.validation import (
    LIMITS,
    SAMPLING_KNOBS,
    UserError,
    bounded_text,
    checked_seed,
    fit_note,
    parse_ids,
    public_message,
    sampling_from,
    whole_number,
)
from maskbit import SAMPLING_PRESETS, analysis
from maskbit.presets import SAMPLING_PRESET_NOTES

JUDGED = {1.0: "kept", 0.0: "another class", -1.0: "none of these"}  # the judge's verdict on a flip

__all__ = ["ExploreCallbacks", "loaded_message"]


class ExploreCallbacks(Endpoints):
    """The model panel, Generate and Bit flips. `state` holds the models and the index."""

    # ------------------------------------------------------------------------------------------------ models

    def model_choices(self) -> list[str]:
        choices = [*BUNDLED_PAIRS, *(OFFICIAL_PAIRS if self.settings.hub_allowed else [])]
        jobs = self.state.jobs
        if jobs is not None:
            choices += [f"run: {name}" for name in jobs.finished_models()]
        return choices

    def model_choices_update(self):
        return gr.update(choices=self.model_choices())

    def pair_sources(self, choice: str) -> tuple[str, str]:
        """A model-pair choice → (tokenizer, generator) sources."""
        pairs = BUNDLED_PAIRS | OFFICIAL_PAIRS
        if choice in pairs:
            return pairs[choice]
        if isinstance(choice, str) and choice.startswith("run: ") and self.state.jobs is not None:
            return self.state.jobs.model_pair(choice.removeprefix("run: "))
        raise UserError(f"unknown model choice {str(choice)[:80]!r}; choose one of the list")

    @guarded
    def model_info(self) -> dict:
        return self.state.models.describe() | {"lpips": self.state.lpips_note, "index": self.index_status()}

    def index_status(self) -> str:
        return self.state.index_status.text()

    @guarded
    def load_models(self, tokenizer: str, generator: str):
        """Load a pair (checked against the allowed sources) → info, the class choices, a message."""
        models = self.state.switch_models(tokenizer, generator)
        names = models.class_names
        classes = gr.update(choices=names, value=names[:1]) if names else gr.update(choices=[], value=[])
        return self.model_info(), classes, loaded_message(models)

    def generation_note(self) -> str:
        """What the Generate tab says about the loaded pair (and why the button is off)."""
        models = self.state.models
        return "" if models.can_generate else f"⚠️ {models.why_not}."

    def generation_controls(self):
        """The Generate button, on only when the loaded pair can generate, and the note that says why not."""
        return gr.update(interactive=self.state.models.can_generate), self.generation_note()

    def cleared(self):
        """Empty generation outputs, after a new pair is loaded (their results, and errors, were the old pair's)."""
        return [], None, None, ""

    # ------------------------------------------------------------------------------------------------ generate

    @gpu
    @guarded
    def generate(
        self,
        labels,
        count,
        seed,
        num_steps,
        guidance_scale,
        guidance_annealing,
        scale_pow,
        randomize_temperature,
        softmax_temperature,
        mask_schedule,
    ):
        """Stream each sampling step (its frames and the masked fraction); the gallery changes only at the end."""
        models = self.state.models
        if not models.can_generate:
            raise UserError(models.why_not)
        if isinstance(labels, str):
            labels = [c for c in bounded_text(labels, "labels").split(",") if c.strip()]
        if not isinstance(labels, list) or not labels:
            raise UserError("labels: choose at least one class")
        if len(labels) > len(models.class_names):
            raise UserError(
                f"labels: choose at most {len(models.class_names)} (the model's classes); got {len(labels)}"
            )
        count = whole_number(count, "count (images)", 1, self.settings.max_images)
        seed = checked_seed(seed)
        chosen = [models.label(c) for c in labels]
        cycled = [chosen[i % len(chosen)] for i in range(count)]
        sampling = sampling_from(
            {
                "num_steps": num_steps,
                "guidance_scale": guidance_scale,
                "guidance_annealing": guidance_annealing,
                "scale_pow": scale_pow,
                "randomize_temperature": randomize_temperature,
                "softmax_temperature": softmax_temperature,
                "mask_schedule": mask_schedule,
            }
        )
        frames, fractions = [], []
        for step in generate_steps(models, cycled, sampling, seed):
            frames.append(pictures.frames_sheet(step.frames))
            fractions.append(step.masked_fraction)
            progress = f"step {step.step} of {step.num_steps}"
            if step.images is None:
                plot = figures.masked_fraction(fractions + [None] * (step.num_steps - step.step), step.step)
                yield gr.skip(), plot, gr.skip(), gr.skip(), frames[-1], gr.skip(), progress
        gallery = [
            (pictures.to_array(image), f"{models.class_names[c]} (#{i})")
            for i, (image, c) in enumerate(zip(step.images, cycled))
        ]
        files = [self._png(image, f"generated-{i}") for i, image in enumerate(step.images)]
        state = {"frames": frames, "fractions": fractions}
        slider = gr.update(maximum=len(frames), value=len(frames))
        done = f"{count} image{'s' if count > 1 else ''}, {sampling.num_steps} steps"
        yield gallery, figures.masked_fraction(fractions, len(frames)), state, slider, frames[-1], files, done

    def show_step(self, unmasking: dict | None, step):
        """The frames of one step of the last generation, and the masked-fraction plot with that step marked."""
        if not unmasking or not unmasking.get("frames"):
            return gr.skip(), gr.skip()
        frames = unmasking["frames"]
        step = min(max(1, int(step)), len(frames))
        return frames[step - 1], figures.masked_fraction(unmasking["fractions"], step)

    def apply_preset(self, name: str):
        """A sampling preset's knobs, and what it was tuned for."""
        if name not in SAMPLING_PRESETS:
            return [gr.skip()] * len(SAMPLING_KNOBS) + [""]
        preset = SAMPLING_PRESETS[name]
        return [getattr(preset, knob) for knob in SAMPLING_KNOBS] + [SAMPLING_PRESET_NOTES.get(name, "")]

    def own_sampling(self) -> tuple[str | None, str]:
        """The preset box and its note for the sampling the knobs hold after a load (the generator's own,
        maskbit.checkpoint.default_sampling): the preset equal to it, if one is, else none and a note that says whose
        sampling it is."""
        models = self.state.models
        if models.generator is None:
            return None, ""
        same = next((name for name, preset in SAMPLING_PRESETS.items() if preset == models.sampling), None)
        if same is not None:
            return same, SAMPLING_PRESET_NOTES.get(same, "")
        return None, f"the knobs hold the generator's own sampling ({models.generator_source}); a preset replaces it"

    def pick_generated(self, files: list[str], evt: gr.SelectData):
        return files[evt.index] if files and evt.index is not None and evt.index < len(files) else None

    def send_generated(self, files: list[str], chosen: str | None):
        """The image chosen in the gallery (or the first) for another tab."""
        path = chosen or (files[0] if files else None)
        if path is None:
            raise gr.Error("generate an image first", print_exception=False)
        return path

    def send_generated_to(self, tab: str, caption: bool = False):
        """`send_generated` for a button that also opens `tab` (only when there is an image to send); with `caption`,
        also the caption that says where the image came from (it replaces a dataset image's)."""

        def send(files: list[str], chosen: str | None):
            sent = self.send_generated(files, chosen), gr.update(selected=tab)
            return (*sent, "a generated image (Generate tab)") if caption else sent

        return send

    # ------------------------------------------------------------------------------------------------ bit flips

    @gpu
    @guarded
    def flip_bits(self, image, bit_ids, positions):
        """Flip each chosen bit i at every token (or the chosen ones), decode, measure against the reconstruction."""
        models = self.state.models
        picture = self._image(image)
        h, w = models.grid
        chosen_bits = parse_ids(bit_ids, models.tokenizer.num_bits, "bit_ids")
        chosen_positions = parse_ids(positions, h * w, "positions")
        indices, _ = analysis.reconstruct(models.tokenizer, picture)
        flips = analysis.flip_each_bit(models.tokenizer, indices, chosen_bits, chosen_positions, self.state.lpips)
        found = flips.distances
        gallery = []
        for i, (bit, flipped) in enumerate(zip(flips.bit_ids, flips.flipped)):
            shown, gain = pictures.with_difference(flipped, flips.reconstruction, (h, w), chosen_positions)
            lpips = f", LPIPS {found.lpips[i]:.3f}" if found.lpips is not None else ""
            gallery.append((shown, f"bit {bit}: {_db(found.psnr[i])}{lpips} · map ×{gain:.0f}"))
        summary = {
            "quantizer": models.tokenizer.quantizer_kind,
            "bit_ids": flips.bit_ids,
            "positions_flipped": flips.num_positions,
            "psnr_db": [_rounded(v, 3) for v in found.psnr],
            "l2": [round(float(v), 4) for v in found.l2],
            "lpips": None if found.lpips is None else [round(float(v), 5) for v in found.lpips],
            "lpips_note": self.state.lpips_note,
            "reconstruction_psnr_db": _rounded(analysis.distances(flips.reconstruction[None], picture).psnr[0], 3),
        }
        return (
            pictures.to_array(picture),
            pictures.to_array(flips.reconstruction),
            gallery,
            figures.flip_psnr(flips.bit_ids, found.psnr, flips.num_positions, h * w),
            figures.flip_distances(flips.bit_ids, found.l2, found.lpips),
            summary,
            pictures.token_grid(flips.reconstruction, (h, w), chosen_positions),
            fit_note(image, models.image_size),
        )

    @guarded
    def toggle_token(self, image, positions, evt: gr.SelectData):
        """A click on the token grid adds or removes that token from the chosen positions."""
        models = self.state.models
        picture = self._image(image)
        h, w = models.grid
        x, y = evt.index
        cell = pictures.enlarged(picture).shape[0] // h
        position = min(int(y // cell), h - 1) * w + min(int(x // cell), w - 1)
        current = parse_ids(positions, h * w, "positions") or []
        chosen = sorted(set(current) ^ {position})
        _, reconstruction = analysis.reconstruct(models.tokenizer, picture)
        text = ", ".join(map(str, chosen)) if chosen else "all"
        return text, pictures.token_grid(reconstruction, (h, w), chosen)

    def comparison_choices(self) -> list[str]:
        """Tokenizers to compare bit flips with: the bundled twins and LFQ tokenizer, and finished tokenizer runs."""
        runs = self.state.jobs.finished_models() if self.state.jobs is not None else []
        tokenizers = (self.state.jobs.model_pair(name)[0] for name in runs)
        return list(dict.fromkeys(["default-vq", "default", "default-omv", "default-ibq", *tokenizers]))

    @gpu
    @guarded
    def compare_flips(self, image, tokenizer, bit_ids, positions):
        """Flip bit i of the image's tokens for the loaded tokenizer and for `tokenizer`, side by side: images, and per
        bit the PSNR, LPIPS and (for the bundled 64-px models) whether the judge still sees the image's class, another
        class, or none of its classes."""
        models = self.state.models
        other = self.state.comparison_tokenizer(tokenizer)
        if other.config.image_size != models.image_size:
            raise UserError(
                f"tokenizer {str(tokenizer)[:80]!r} works at {other.config.image_size} px, the loaded pair at "
                f"{models.image_size} px: compare tokenizers of one image size"
            )
        picture = self._image(image)
        h, w = models.grid
        wanted = parse_ids(bit_ids, max(models.tokenizer.num_bits, other.num_bits), "bit_ids")
        chosen_positions = parse_ids(positions, h * w, "positions")
        judge = self.state.judge()
        rows, galleries, summary = {}, [], {}
        for name, tok in (
            (_kind_name(models.tokenizer, "loaded"), models.tokenizer),
            (_kind_name(other, "compared"), other),
        ):
            indices, _ = analysis.reconstruct(tok, picture)
            own = None if wanted is None else [b for b in wanted if b < tok.num_bits]
            flips = analysis.flip_each_bit(tok, indices, own, chosen_positions, self.state.lpips)
            kept = None  # per bit 1: the class it sees in the reconstruction, 0: another class, -1: none of these
            if judge is not None:
                from data.judge import NONE, verdict

                reference, found = verdict(judge, flips.reconstruction[None])[0], verdict(judge, flips.flipped).numpy()
                kept = np.where(found == NONE, -1.0, (found == int(reference)).astype(float))
            rows[name] = (flips, kept)
            gallery = []
            for b, f, p in zip(flips.bit_ids, flips.flipped, flips.distances.psnr):
                shown, gain = pictures.with_difference(f, flips.reconstruction, (h, w), chosen_positions)
                gallery.append((shown, f"bit {b}: {_db(p)} · map ×{gain:.0f}"))
            galleries.append(gallery)
            summary[name] = {
                "source": str(tokenizer) if tok is other else models.tokenizer_source,
                "quantizer": tok.quantizer_kind,
                "bit_ids": flips.bit_ids,
                "psnr_db": [_rounded(v, 3) for v in flips.distances.psnr],
                "lpips": None if flips.distances.lpips is None else [round(float(v), 5) for v in flips.distances.lpips],
                "judge": None if kept is None else [JUDGED[v] for v in kept.tolist()],  # against the reconstruction
            }
        names = list(rows)
        bit_axis = sorted({b for flips, _ in rows.values() for b in flips.bit_ids})
        psnr = figures.compare(
            bit_axis,
            {n: dict(zip(r[0].bit_ids, r[0].distances.psnr)) for n, r in rows.items()},
            "PSNR (higher: less change)",
            "PSNR (dB)",
        )
        if self.state.lpips is not None:
            lpips = {n: dict(zip(r[0].bit_ids, r[0].distances.lpips)) for n, r in rows.items()}
            distance = figures.compare(bit_axis, lpips, "LPIPS (lower: less change)", "LPIPS")
        else:
            l2 = {n: dict(zip(r[0].bit_ids, r[0].distances.l2)) for n, r in rows.items()}
            distance = figures.compare(bit_axis, l2, "L2 per bit (no LPIPS weights on this server)", "L2")
        if judge is not None:
            kept = {n: dict(zip(r[0].bit_ids, r[1])) for n, r in rows.items()}
            verdict = figures.compare(bit_axis, kept, "judge: the same shape, another, or none?", "", zero_marks=True)
            verdict.update_yaxes(tickvals=list(JUDGED), ticktext=list(JUDGED.values()), range=[-1.1, 1.1])
        else:
            verdict = figures.empty("the judge knows the bundled dataset's 64-px shapes only")
        return galleries[0], galleries[1], psnr, distance, verdict, summary | {"tokenizers": names}

    @gpu
    @guarded
    def code_atlas(self):
        """Every code of the loaded tokenizer decoded, codes one bit apart side by side (maskbit.analysis)."""
        tokenizer = self.state.models.tokenizer
        atlas = self.state.atlas(tokenizer)
        source = self.state.models.tokenizer_source
        caption = f"{tokenizer.quantizer_kind.upper()} tokenizer {source}: {atlas.describe(tokenizer.num_bits)}"
        return pictures.to_array(atlas.image), caption

    @gpu
    @guarded
    def token_map(self, image):
        """The bit planes of an image's tokens and the token indices."""
        models = self.state.models
        indices, _ = analysis.reconstruct(models.tokenizer, self._image(image))
        planes = analysis.bit_planes(indices.cpu(), models.tokenizer.num_bits)
        gallery = [
            (pictures.to_array(plane.float()[None].expand(3, -1, -1)), f"bit {k}") for k, plane in enumerate(planes)
        ]
        return gallery, figures.token_indices(indices.cpu().numpy()), indices.tolist()

    @gpu
    @guarded
    def bit_walk(self, image, bits_per_step, num_steps, seed):
        """A random walk in Hamming space from the image's tokens: each step flips `bits_per_step` more bits."""
        models = self.state.models
        indices, _ = analysis.reconstruct(models.tokenizer, self._image(image))
        bits_per_step = whole_number(bits_per_step, "bits_per_step", 1, LIMITS.walk_r)
        num_steps = whole_number(num_steps, "num_steps", 1, LIMITS.walk_steps)
        total = indices.numel() * models.tokenizer.num_bits
        if bits_per_step * num_steps > total:
            raise UserError(
                f"bits_per_step × num_steps must be at most the image's {total} bits; got {bits_per_step} × {num_steps}"
            )
        walk = analysis.hamming_walk(
            models.tokenizer, indices, bits_per_step, num_steps, checked_seed(seed), self.state.lpips
        )
        captions = ["reconstruction"] + [
            f"{d} bits ({d / total:.0%}): {_db(p)}" for d, p in zip(walk.hamming[1:], walk.distances.psnr[1:])
        ]
        gallery = [(pictures.to_array(image), caption) for image, caption in zip(walk.images, captions)]
        return gallery, figures.walk(walk.hamming, walk.distances.psnr, walk.distances.lpips)

    def uploaded(self, image):
        """An upload to Bit flips: its caption replaces the last image's; a file that is no image is taken off the page
        at once, and the caption says why (the page showed a broken image under the old caption)."""
        try:
            self._image(image)
        except ValueError as error:  # UserError: app/validation.py:load_upload says what is wrong with the file
            return None, f"⚠️ {public_message(str(error))}"
        return gr.skip(), ""

    @staticmethod
    def emptied(count: int):
        """A callback that empties `count` outputs (images, galleries, plots, JSON, messages): the results of an image
        that another replaced, and the warnings they came with."""
        return lambda: (None,) * count

    @guarded
    def dataset_image(self, item):
        """Item `item` of the indexed dataset's training split, to flip bits of."""
        if not self.settings.dataset_images_visible:
            raise UserError("training-set images are not shown on this server (the deployer can turn them on)")
        from data import eval_view

        index = self.state.index
        spec = index.dataset.spec if index is not None and index.dataset else self.settings.index_dataset
        view = eval_view(spec, "train", 0, self.state.models.image_size)
        item = whole_number(item, "item (dataset image number)", 0, len(view) - 1)
        image, label = view[item]
        name = view.classes[label] if label < len(view.classes) else label
        return self._png(image, f"dataset-{item}"), f"{spec} train #{item}: {name}"


def loaded_message(models: Models) -> str:
    """What the page says after a pair was loaded."""
    what = f"{models.tokenizer_source} + {models.generator_source or 'no generator'}"
    note = "" if models.can_generate else f" — {models.why_not}"
    return f"✅ loaded {what}{note}"


def _db(psnr: float) -> str:
    return "identical" if not np.isfinite(psnr) else f"{psnr:.1f} dB"


def _rounded(value: float, digits: int) -> float | None:
    """JSON has no infinity: identical images' PSNR is reported as null."""
    return round(float(value), digits) if np.isfinite(value) else None


def _kind_name(tokenizer, role: str) -> str:
    return f"{role} ({tokenizer.quantizer_kind.upper()})"
