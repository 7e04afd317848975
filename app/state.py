"""What the running app holds: the loaded models, the index (opened or built in the background), LPIPS, jobs.

Callbacks read `state.models` / `state.index` once at their start, so a model switch in the middle of a request
never mixes two models; the switch itself happens under a lock and replaces both references together.
"""

from __future__ import annotations

import contextlib
import logging
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from app.files import TempFiles
from app.jobs import Jobs
from app.models import Models, load_model, load_models
from app.settings import Settings
from app.validation import UserError, checked_model_source
from indexes.store import ImageIndex, IndexError_, IndexOptions
from maskbit import Tokenizer
from maskbit.analysis import MAX_DRAWN_BITS, Atlas, code_atlas
from maskbit.device import run_in_background
from maskbit.files import DiskFullError

logger = logging.getLogger("app")

__all__ = ["AppState", "IndexStatus"]


class Superseded(Exception):
    """A model switch made the running background work stale: it stops at its next status update."""


@dataclass
class IndexStatus:
    state: str = "none"  # none | building | ready | unavailable
    done: int = 0
    total: int = 0
    what: str = ""
    message: str = ""

    def text(self) -> str:
        if self.state == "building":
            percent = f" {self.done}/{self.total}" if self.total else ""
            return f"⏳ building the index: {self.what}{percent}"
        if self.state == "none":
            return "⏳ the index is being prepared in the background (opened, or built for these models)"
        return {"ready": "✅ ", "unavailable": "⚠️ "}[self.state] + self.message


class AppState:
    def __init__(self, settings: Settings):
        self.settings = settings
        self.lock = threading.RLock()
        self.models: Models = load_models(
            settings.tokenizer,
            settings.generator,
            settings.tokenizer_config,
            settings.generator_config,
            precision=settings.precision,
        )
        self.index: ImageIndex | None = None
        self.index_status = IndexStatus()
        self.projection: np.ndarray | None = None
        self.lpips = None
        self.lpips_note = "LPIPS: loading…"
        self.jobs = (
            Jobs(settings.workspace, settings.data_roots, settings.model_roots, settings.hub_allowed)
            if settings.training_enabled
            else None
        )
        self.files = TempFiles(settings.max_temp_files)  # the PNGs the UI hands between tabs
        self._atlases: dict[str, Atlas] = {}  # tokenizer identity and code source → its atlas (computed once)
        self._atlas_lock = threading.Lock()  # seconds of decoding per atlas: one computation at a time
        self._comparisons: dict[str, Tokenizer] = {}  # source → a second tokenizer for side-by-side bit flips
        self._judge = None  # data/judge.py's classifier, loaded on first use
        self._generation = 0  # bumped on every model switch; stale background work drops its result
        self._ready = threading.Event()  # set when the current models' background work has ended
        self._worker: threading.Thread | None = None  # the newest background thread (one runs at a time)

    # ------------------------------------------------------------------------------------------------ models

    def switch_models(self, tokenizer: str, generator: str, progress: Callable[[str], None] | None = None) -> Models:
        """Load a pair a user asked for: only 'default', the workspace's runs, the model roots, the start-up models,
        and hub ids where they are allowed (app/validation.py:checked_model_source). `progress` is told each stage
        (app/models.py:load_models; then the switch, which waits for other work on the models to let go of them)."""
        tokenizer, generator = self.checked_sources(tokenizer, generator)
        models = load_models(tokenizer, generator, precision=self.settings.precision, progress=progress)
        if progress is not None:
            progress("the new pair into the explorer")
        with self.lock:
            self.models = models
            self._generation += 1
            self.index, self.projection = None, None
            self.index_status = IndexStatus()
            self.start_background()
        return models

    def checked_sources(self, tokenizer: str, generator: str) -> tuple[str, str]:
        s = self.settings
        roots, trusted = [s.workspace, *s.model_roots], s.trusted_models
        tokenizer = checked_model_source(tokenizer, "tokenizer", roots, s.hub_allowed, trusted)
        if generator is None or (isinstance(generator, str) and not generator.strip()):
            return tokenizer, ""
        return tokenizer, checked_model_source(generator, "generator", roots, s.hub_allowed, trusted)

    def comparison_tokenizer(self, source: str) -> Tokenizer:
        """A second tokenizer to flip bits with, from the same sources as any model (the two newest kept)."""
        source, _ = self.checked_sources(source, "")
        with self.lock:
            if source not in self._comparisons:
                tokenizer = load_model(Tokenizer, source, None, self.models.device, self.settings.precision)
                self._comparisons = dict(list(self._comparisons.items())[-1:]) | {source: tokenizer}
            return self._comparisons[source].to(self.models.device)

    def atlas(self, tokenizer: Tokenizer) -> Atlas:
        """The tokenizer's code atlas (maskbit.analysis.code_atlas), computed once per tokenizer: a request that
        comes while the background thread computes it waits for that result instead of computing it again. Where the
        atlas samples codes (more than 2^12), they are codes the index's images use once the index is ready."""
        index = self.index
        used = None
        if tokenizer.num_bits > MAX_DRAWN_BITS and index is not None and len(index) and index.tokenizer is tokenizer:
            used = index.tokens
        key = f"{tokenizer.identity()}:{'random' if used is None else 'index'}"
        with self._atlas_lock:
            if key not in self._atlases:
                self._atlases[key] = code_atlas(tokenizer, used=used)
            return self._atlases[key]

    def judge(self):
        """The bundled judge of the procedural shapes, for 64-px models; None for others (it knows nothing else)."""
        if self.models.image_size != 64:
            return None
        if self._judge is None:
            from data import judge

            self._judge = judge.load()
        return self._judge

    # ------------------------------------------------------------------------------------------------ background

    def start_background(self) -> threading.Thread:
        with self.lock:  # two switches at once: each new thread waits for the one before it
            self._ready.clear()
            previous = self._worker
            self._worker = threading.Thread(
                target=self._background, args=(self._generation, previous), daemon=True, name="index"
            )
            self._worker.start()
            return self._worker

    def _background(self, generation: int, previous: threading.Thread | None) -> None:
        run_in_background()  # one thread at a lower priority: the user's requests keep the cores
        if previous is not None:
            previous.join()  # stale work stops at its next status update; two never write one index at once
        try:
            self._load_lpips()
            self._prepare_index(generation)
        except Superseded:
            logger.info("background work for replaced models stopped")
        except Exception as error:  # never let the thread die silently
            logger.exception("background index preparation failed")
            message = f"index failed: {type(error).__name__}: {error}"
            with contextlib.suppress(Superseded):
                self._set_status(generation, IndexStatus("unavailable", message=message))
        finally:
            if generation == self._generation:
                self._ready.set()

    def _load_lpips(self) -> None:
        if self.lpips is not None or self.lpips_note.startswith("LPIPS unavailable"):
            return
        from indexes.lpips_embedding import LPIPSEmbedding, MissingBackboneError

        try:
            self.lpips = LPIPSEmbedding("alex", self.settings.random_lpips_backbone).to(self.models.device)
            self.lpips_note = (
                "LPIPS (AlexNet) with a RANDOM backbone: the formula is exercised but values are not the real metric"
                if self.settings.random_lpips_backbone
                else f"LPIPS (AlexNet, {self.lpips.source})"
            )
        except MissingBackboneError as error:
            self.lpips_note = f"LPIPS unavailable: {error}"

    def _set_status(self, generation: int, status: IndexStatus) -> None:
        """Every status update is where stale work stops (an index build resumes where it stopped)."""
        with self.lock:
            if generation != self._generation:
                raise Superseded
            self.index_status = status

    def index_directory(self, models: Models) -> Path:
        if self.settings.index:
            return Path(self.settings.index)
        # Indexes built before LPIPS weights shipped have no LPIPS: one with LPIPS lives beside them.
        lpips = "" if self.lpips is None else "-lpips-random" if self.settings.random_lpips_backbone else "-lpips"
        return self.settings.index_root / f"{models.tokenizer.identity()[:16]}{lpips}"

    def _prepare_index(self, generation: int) -> None:
        """The index policy is `indexes.build.ready_index`'s; here only its progress, the UMAP and the code atlas."""
        from indexes.build import ready_index, token_projection

        models = self.models

        def progress(done: int, total: int, what: str) -> None:
            self._set_status(generation, IndexStatus("building", done, total, what))

        metrics = ["hamming", "lpips", "pixel"] if self.lpips is not None else ["hamming", "pixel"]
        try:
            index = ready_index(
                self.index_directory(models),
                models.tokenizer,
                dataset=self.settings.index_dataset,
                limit=self.settings.index_limit,
                resolution=models.image_size,
                options=IndexOptions(metrics, random_lpips_backbone=self.settings.random_lpips_backbone),
                must_exist=bool(self.settings.index),
                progress=progress,
            )
        except (IndexError_, DiskFullError) as error:  # a full disk: the message says what was kept; serving goes on
            self._set_status(generation, IndexStatus("unavailable", message=str(error)))
            return
        with self.lock:
            if generation != self._generation:
                return
            self.index = index
        self._set_status(generation, IndexStatus("ready", message=index.describe()))
        if len(index) >= 5:
            self._set_status(generation, IndexStatus("building", 0, 0, "projecting tokens (UMAP)", index.describe()))
            started = time.time()
            projection = token_projection(index)
            logger.info("token projection of %d images in %.1f s", len(projection), time.time() - started)
            with self.lock:
                if generation == self._generation:
                    self.projection = projection
            self._set_status(generation, IndexStatus("ready", message=index.describe()))
        if models.image_size <= 128:  # seconds for small models; a 256-px decoder takes minutes on a CPU
            self.atlas(models.tokenizer)

    def require_index(self) -> ImageIndex:
        index = self.index
        if index is None:
            status = self.index_status
            if status.state == "building":
                raise UserError(
                    f"the index is still being built ({status.what} {status.done}/{status.total}); try again shortly"
                )
            raise UserError(status.message or "no index is loaded")
        return index

    def wait_ready(self, timeout: float = 600) -> None:
        """Block until the index (and its projection) are ready or unavailable (for scripts and tests)."""
        if not self._ready.wait(timeout):
            raise TimeoutError("the index was not ready in time")
