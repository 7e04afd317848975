"""All the app's endpoints, one object: `Callbacks(state).explore.generate(...)`, `.search.neighbours(...)`, ….

The endpoints live with their tab, as three objects over one state: app/explore.py (model panel, Generate, Bit
flips), app/search.py (Neighbours, Token space), app/training.py (Training). None calls another; what joins two
tabs (loading a finished job into the explorer, the values the page starts from) is here. Tests call the endpoints
directly; app/layout.py wires them to widgets.
"""

from __future__ import annotations

import dataclasses
import threading
import time
from collections.abc import Callable, Iterator

import gradio as gr

from app.endpoint import guarded
from app.explore import ExploreCallbacks, loaded_message
from app.jobs import PRESETS, STAGES
from app.search import SearchCallbacks
from app.state import AppState
from app.training import JOB_COLUMN_WIDTHS, JOB_COLUMNS, TrainingCallbacks
from app.validation import KNOB_RANGES, LIMITS, SAMPLING_KNOBS
from maskbit.config import GUIDANCE_ANNEALINGS, MASK_SCHEDULES
from maskbit.presets import SAMPLING_PRESETS

__all__ = ["Callbacks"]

PROGRESS_EVERY_S = 1.0  # how often a model load in progress tells the page what it is loading and for how long


class Callbacks:
    """Every endpoint of the explorer, over the models, index and jobs that `state` holds (`Callbacks(state)`): the
    three tabs' objects (`callbacks.explore.generate`, `callbacks.search.neighbours`, `callbacks.training.train_launch`)
    and the endpoints that join two of them."""

    def __init__(self, state: AppState):
        self.state, self.settings = state, state.settings
        self.explore = ExploreCallbacks(state)
        self.search = SearchCallbacks(state)
        self.training = TrainingCallbacks(state)

    @guarded
    def train_load(self, name):
        """Load a finished job's model into the explorer (its tokenizer, and its generator if it trained one)."""
        tokenizer, generator = self.training.model_pair(name)
        info, classes, message = self.explore.load_models(tokenizer, generator)
        choices = gr.update(choices=self.explore.model_choices(), value=f"run: {name}")
        return info, classes, message, choices, message

    def page_values(self) -> dict:
        """What the page's widgets start from (app/layout.py imports no torch, so it asks here)."""
        models, settings = self.state.models, self.settings
        total_bits = models.grid[0] * models.grid[1] * models.tokenizer.num_bits
        choices = self.explore.model_choices()
        current = (models.tokenizer_source, models.generator_source)
        return {
            "model_choices": choices,
            "comparison_choices": self.explore.comparison_choices(),
            "model_choice": next((c for c in choices if self._pair(c) == current), None),
            "tokenizer": models.tokenizer_source,
            "generator": models.generator_source,
            "index_status": self.explore.index_status(),
            "lpips_ready": self.state.lpips is not None,
            "second_claim": self.search.second_claim(None),
            "class_names": models.class_names,
            "sampling": dataclasses.asdict(models.sampling),
            "sampling_presets": list(SAMPLING_PRESETS),
            "sampling_knobs": list(SAMPLING_KNOBS),
            "guidance_annealings": list(GUIDANCE_ANNEALINGS),
            "mask_schedules": list(MASK_SCHEDULES),
            "can_generate": models.can_generate,
            "generation_note": self.explore.generation_note(),
            "limits": {
                "max_images": settings.max_images,
                "knobs": KNOB_RANGES,  # the sampling knobs' (low, high)
                "k": LIMITS.k,
                "walk_r": LIMITS.walk_r,
                "walk_steps": LIMITS.walk_steps,
                "report_images": LIMITS.report_images,
                "report_plant": LIMITS.report_plant,
            },
            "walk_bits": max(1, min(LIMITS.walk_r, total_bits // 24)),  # 8 steps flip a third of the bits
            "dataset_images_visible": settings.dataset_images_visible,
            "training_enabled": self.state.jobs is not None,
            "stages": list(STAGES),
            "train_presets": PRESETS,
            "job_columns": JOB_COLUMNS,
            "job_column_widths": JOB_COLUMN_WIDTHS,
        }

    # ------------------------------------------------------------------------------------------------ the page

    def served(self) -> dict:
        """Everything the page shows of the pair the server holds now, by the name of the widget that shows it
        (app/layout.py's `served`): model pair, tokenizer, generator, model info, classes, the sampling knobs (by
        their SAMPLING_KNOBS names), the preset box and its note, the step slider, the Generate button and its note,
        the tokenizers to compare with, bits per walk step, the index line, the LPIPS gallery and the note in its place
        (the last three are `status()`'s). Every page load asks for it, so a page reloaded after a switch (here or in
        another tab) shows the new pair."""
        v = self.page_values()
        names, sampling = v["class_names"], v["sampling"]
        preset, preset_note = self.explore.own_sampling()
        index_line, lpips_gallery, lpips_note = self.status()
        return {
            "pair": gr.update(choices=v["model_choices"], value=v["model_choice"]),
            "tokenizer": v["tokenizer"],
            "generator": v["generator"],
            "info": self.explore.model_info(),
            "labels": gr.update(choices=names, value=names[:1]),
            **{knob: sampling[knob] for knob in SAMPLING_KNOBS},
            "preset": preset,
            "preset_note": preset_note,
            "step": gr.update(maximum=sampling["num_steps"], value=sampling["num_steps"]),
            "button": gr.update(interactive=v["can_generate"]),
            "note": v["generation_note"],
            "compare_with": gr.update(choices=v["comparison_choices"]),
            "walk_bits": gr.update(value=v["walk_bits"]),
            "index_line": index_line,
            "lpips_gallery": lpips_gallery,
            "lpips_note": lpips_note,
        }

    def status(self) -> tuple:
        """The index line, and the LPIPS gallery or, in its place until LPIPS is ready, the note that says why not
        (the page's timer asks every 2 s: LPIPS and the index are prepared in the background)."""
        ready = self.state.lpips is not None
        note = f"**by LPIPS**: {self.state.lpips_note}" if not ready else ""
        return self.explore.index_status(), gr.update(visible=ready), gr.update(value=note, visible=not ready)

    def load_served(self, tokenizer: str, generator: str) -> Iterator[tuple]:
        """The model panel's Load on the page (`_loading`): what `served` shows (its dict), the message, and the old
        pair's generation outputs emptied."""
        yield from self._loading(lambda: (tokenizer, generator), messages=1)

    def train_load_served(self, name: str) -> Iterator[tuple]:
        """The Training tab's "Load into explorer" on the page: as `load_served`, the message in both places."""
        yield from self._loading(lambda: self.training.model_pair(name), messages=2)

    def _loading(self, sources: Callable[[], tuple[str, str]], messages: int) -> Iterator[tuple]:
        """Load the pair `sources()` names, streamed to the page: while it loads, what is being loaded and for how
        long (a hub download takes a while, and offline it fails only after its retries); then, loaded or not, what
        `served` shows, i.e. exactly the pair the server holds (after a failed load the last pair: the boxes, the pair
        menu and the knobs say so), the message in `messages` places and, after a switch, the old pair's generation
        outputs emptied."""
        unchanged = dict.fromkeys(self.served(), gr.skip())
        cleared = len(self.explore.cleared())
        stage, done = ["the models"], {}

        @guarded  # failures become the message an endpoint would give (app/endpoint.py), never a traceback
        def switch():
            return self.state.switch_models(*sources(), progress=stage.append)

        def load() -> None:
            try:
                done["message"] = loaded_message(switch())
            except gr.Error as error:
                models = self.state.models
                held = f"{models.tokenizer_source} + {models.generator_source or 'no generator'}"
                done["error"] = f"⚠️ {error.message}. The explorer still holds {held}."

        started = time.monotonic()
        worker = threading.Thread(target=load, daemon=True, name="model-load")
        worker.start()
        while worker.is_alive():
            text = f"⏳ loading {stage[-1]} … {time.monotonic() - started:.0f} s"
            yield (unchanged, *(text,) * messages, *(gr.skip(),) * cleared)
            worker.join(PROGRESS_EVERY_S)
        if "error" in done:
            yield (self.served(), *(done["error"],) * messages, *(gr.skip(),) * cleared)
        else:
            yield (self.served(), *(done["message"],) * messages, *self.explore.cleared())

    def _pair(self, choice: str) -> tuple[str, str] | None:
        try:
            return self.explore.pair_sources(choice)
        except ValueError:
            return None
