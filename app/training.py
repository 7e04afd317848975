"""The Training tab's endpoints: launch, watch, stop, resume jobs (app/jobs.py), and name a finished job's models
(app/callbacks.py loads them into the explorer)."""

from __future__ import annotations

import re

import gradio as gr

from app import figures
from app.endpoint import Endpoints, guarded
from app.jobs import PRESETS, Jobs
from app.validation import UserError, bounded_text

__all__ = ["TrainingCallbacks", "JOB_COLUMNS", "JOB_COLUMN_WIDTHS"]

JOB_COLUMNS = ["job", "stage", "state", "step", "loss", "pid", "error"]
JOB_COLUMN_WIDTHS = ["14%", "9%", "8%", "11%", "7%", "7%", "44%"]  # the error column takes what is left
# The messages of a job action that hold only while the job runs; the page's timer replaces them once it has ended.
PENDING = re.compile(r"(launched|resuming|asked) (?P<name>\S+)")
ENDED = ("finished", "stopped", "failed", "died")


class TrainingCallbacks(Endpoints):
    """Training jobs; off (every call says why) when the server is exposed without --enable-training and --auth."""

    def _jobs(self) -> Jobs:
        if self.state.jobs is None:
            raise UserError("training is disabled on this server (exposed without --enable-training and --auth)")
        return self.state.jobs

    def _table(self) -> list[list]:
        return self._jobs().table()

    def train_presets_update(self, stage: str):
        return gr.update(choices=PRESETS.get(stage, []), value="tiny")

    @guarded
    def train_status(self):
        """The job table and the job choices."""
        table = self._table()
        return table, gr.update(choices=[row[0] for row in table])

    @guarded
    def train_launch(self, stage, name, preset, dataset, overrides):
        """Start `accelerate launch -m train <stage>` with a recipe, a dataset and key=value overrides."""
        name = bounded_text(name, "name (job name)", 200).strip()
        self._jobs().launch(stage, name, preset, dataset, overrides or "")
        table = self._table()
        return table, gr.update(choices=[row[0] for row in table], value=name), f"launched {name}"

    @guarded
    def train_stop(self, name):
        self._jobs().stop(name)
        return self._table(), f"asked {name} to stop (it writes a checkpoint first; resume continues it)"

    @guarded
    def train_resume(self, name):
        self._jobs().resume(name)
        return self._table(), f"resuming {name}"

    def _curves(self, name: str):
        jobs = self._jobs()
        sample = jobs.latest_sample(name)
        curves = figures.training_curves(jobs.metrics(name), name)
        if sample is None:
            return curves, gr.update(value=None, label="latest samples"), jobs.console_view(name)
        shown = gr.update(value=str(sample), label=_sample_label(jobs.job(name).stage, sample.stem))
        return curves, shown, jobs.console_view(name)

    @guarded
    def train_curves(self, name):
        """A job's losses (and evaluation PSNR), its latest sample grid and the end of its console."""
        if not name:
            return figures.empty("choose a job"), None, ""
        return self._curves(name)

    def jobs_view(self):
        """The job table and choices for a page that opens: nothing (no error badge) where training is off."""
        if self.state.jobs is None:
            return gr.skip(), gr.skip()
        table = self._table()
        return table, gr.update(choices=[row[0] for row in table])

    def refresh(self, name, message=""):
        """The timer's view of the jobs: never an error badge (a job that disappeared only empties its panel). A
        message that a job was launched, resumed or asked to stop is replaced by its end once the job has ended."""
        if self.state.jobs is None:
            return gr.skip(), gr.skip(), gr.skip(), gr.skip(), gr.skip()
        try:
            return self._table(), *(self._curves(name) if name else (gr.skip(),) * 3), self._ended(message)
        except (UserError, OSError, ValueError):
            return gr.skip(), figures.empty(f"job {str(name)[:80]!r} cannot be read"), None, "", gr.skip()

    def _ended(self, message):
        """`message` if it is not the pending message of a job that has ended since, else what became of the job."""
        jobs, pending = self._jobs(), PENDING.match(str(message or ""))
        if pending is None or pending["name"] not in jobs.names() or jobs.is_running(pending["name"]):
            return gr.skip()  # a resumed job's status still says how it last ended until its trainer starts
        job = jobs.job(pending["name"])
        return f"{job.name} {job.state} at step {job.step}/{job.total_steps}" if job.state in ENDED else gr.skip()

    def model_pair(self, name) -> tuple[str, str]:
        """A finished job's (tokenizer, generator) sources; app/callbacks.py:Callbacks.train_load loads them."""
        return self._jobs().model_pair(bounded_text(name, "name (job name)", 200))


def _sample_label(stage: str, stem: str) -> str:
    """What a sample grid of train/engine.py shows (its file is samples/step-N.png)."""
    step = stem.removeprefix("step-")
    if stage == "generator":
        return f"samples at step {step}: one row per class (the first 8 classes), generated with the run's sampling"
    return f"samples at step {step}: held-out images (top row) and the tokenizer's reconstructions (bottom row)"
