"""Training jobs started from the app: `accelerate launch -m train ...` processes, watched through run directories.

The app never holds the truth about a job: each job is a run directory under the workspace (config.json,
status.json with the trainer's pid, metrics.jsonl, samples/, model/), so jobs survive an app restart. Processes
are started from argument lists (no shell) in their own session, and stopped by signalling that whole process
group; SIGTERM makes the trainer write a checkpoint and stop, so a stopped job can be resumed.
"""

from __future__ import annotations

import contextlib
import json
import os
import re
import shutil
import signal
import subprocess
import sys
import threading
import time
from dataclasses import dataclass
from pathlib import Path

from app.validation import JobPaths, UserError
from train.config import (
    GENERATOR_TRAIN_PRESETS,
    TOKENIZER_TRAIN_PRESETS,
    apply_overrides,
    load_train_config,
)
from train.rundir import RunDir

__all__ = ["Jobs", "Job", "STAGES", "PRESETS"]

# accelerate's note on the launch values it chose (`--num_cpu_threads_per_process` …): harmless, not an error
LAUNCHER_NOTE = re.compile(
    r"^(The following values were not passed to `accelerate launch`.*|\t+.*|"
    r"To avoid this warning pass in values for each of the problematic parameters.*|\s*)$"
)
LAUNCHER_FAILURE = "subprocess.CalledProcessError:"  # the last line of accelerate's traceback when the trainer failed
CONSOLE_READ_LINES = 400  # the console's last lines read for its view: enough to pass accelerate's traceback

STAGES = ("tokenizer", "generator")
PRESETS = {"tokenizer": sorted(TOKENIZER_TRAIN_PRESETS), "generator": sorted(GENERATOR_TRAIN_PRESETS)}
NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.-]{0,63}$")
STOP_GRACE_S = 30.0  # how long a resume waits for a stopping job (its SIGTERM checkpoint) before it gives up
PROJECT_ROOT = Path(__file__).resolve().parent.parent  # the trainer's working directory
MAX_OVERRIDE_BYTES = 16_384  # every config key once is about 3 kB
MAX_OVERRIDES = 200  # key=value items


@dataclass
class Job:
    name: str
    stage: str
    state: str
    step: int
    total_steps: int
    loss: float | None
    pid: int | None
    error: str | None
    updated: float

    def row(self) -> list:
        loss = "" if self.loss is None else f"{self.loss:.4g}"
        return [
            self.name,
            self.stage,
            self.state,
            f"{self.step}/{self.total_steps}",
            loss,
            self.pid or "",
            self.error or "",
        ]


def pid_alive(pid: int | None) -> bool:
    if not pid:
        return False
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    try:  # a zombie (exited, not yet reaped by us) is not running
        return Path(f"/proc/{pid}/stat").read_text().split(")")[-1].split()[0] != "Z"
    except OSError:
        return True


class Jobs:
    """Launch, resume, stop and read the training jobs under `workspace`.

    Every path a job will read is checked by `paths` (app.validation.JobPaths) and handed to the trainer as the
    checked absolute path. A job name is reserved by creating its run directory, which succeeds for one launch
    only."""

    def __init__(
        self,
        workspace: str | Path,
        data_roots: list[str | Path] = (),
        model_roots: list[str | Path] = (),
        allow_hub: bool = False,
    ):
        self.workspace = Path(workspace).resolve()
        self.paths = JobPaths(self.workspace, data_roots, model_roots, allow_hub, PROJECT_ROOT, self.find)
        self.processes: dict[str, subprocess.Popen] = {}  # started by this app instance (reaped here)
        self._resuming = threading.Lock()

    # ------------------------------------------------------------------------------------------------ paths

    def run_dir(self, name: str) -> RunDir:
        if not isinstance(name, str) or not NAME.match(name):
            shown = repr(name) if not isinstance(name, str) or len(name) <= 80 else f"{name[:80]!r}…"
            raise UserError(
                f"job name {shown} is invalid: use 1–64 letters, digits, _ - or ., starting with a letter or digit"
            )
        return RunDir(self.workspace / name)

    # ------------------------------------------------------------------------------------------------ commands

    def command(self, stage: str, run: RunDir, preset: str = "", overrides: list[str] = (), resume: bool = False):
        from maskbit.device import mixed_precision, pick_device, usable_cores

        # One process on the device the app uses. The trainer hands accelerate its config's training.mixed_precision
        # ("auto": maskbit.device.mixed_precision), which wins over the launcher's default given here. On the CPU it
        # may use the app's cores (OMP_NUM_THREADS) and fits its threads to the load at every step
        # (maskbit.device.fit_threads); `_start` lowers its priority, so the app's requests come first.
        device = pick_device()
        launcher = Path(sys.executable).with_name("accelerate")  # the venv's `accelerate` script
        head = [str(launcher), "launch"] if launcher.is_file() else [sys.executable, "-m", "accelerate.commands.launch"]
        head += ["--num_processes", "1", "--num_machines", "1", "--mixed_precision", mixed_precision("auto", device)]
        head += ["--dynamo_backend", "no"]
        if device.type == "cpu":
            head += ["--cpu", "--num_cpu_threads_per_process", str(usable_cores())]
        args = head + ["-m", "train", stage, "--run-dir", str(run.path)]
        if resume:
            return args + ["--resume"]
        return args + ["--preset", preset] + (["--set", *overrides] if overrides else [])

    @staticmethod
    def override_items(overrides: str) -> list[str]:
        """'key=value' items, one or more per line; bounded in bytes and count before anything else is done."""
        overrides = overrides or ""
        if not isinstance(overrides, str):
            raise UserError(f"overrides must be text, one key=value per line; got {type(overrides).__name__}")
        size = len(overrides.encode("utf-8", "replace"))
        items = overrides.split(maxsplit=MAX_OVERRIDES)  # at most MAX_OVERRIDES + 1 items are ever split off
        if size > MAX_OVERRIDE_BYTES or len(items) > MAX_OVERRIDES:
            lines = overrides.count("\n") + (not overrides.endswith("\n"))
            raise UserError(
                f"overrides are {size:,} bytes in {lines:,} lines; the limit is {MAX_OVERRIDE_BYTES:,} bytes and "
                f"{MAX_OVERRIDES} key=value items: set each key once"
            )
        return items

    def launch(self, stage: str, name: str, preset: str, dataset: str = "procedural", overrides: str = "") -> str:
        """Validate everything a user typed (the config is resolved here first), then start the process."""
        if stage not in STAGES:
            raise UserError(f"stage must be one of {', '.join(STAGES)}, got {str(stage)[:40]!r}")
        if preset not in PRESETS[stage]:
            raise UserError(f"unknown {stage} preset {str(preset)[:80]!r}; presets: {', '.join(PRESETS[stage])}")
        run = self.run_dir(name)
        if run.path.exists():
            raise UserError(f"a job named {name!r} already exists; resume it or choose another name")
        items = self.override_items(overrides)
        data = self.paths.checked_dataset(dataset)
        if data != "procedural" or not any(i.startswith("data.dataset=") for i in items):
            items = [i for i in items if not i.startswith("data.dataset=")] + [f"data.dataset={data}"]
        try:
            config = apply_overrides(load_train_config(stage, preset, None), items)
        except (ValueError, KeyError, TypeError) as error:
            raise UserError(str(error)) from None
        # However a path was given (preset, form field, override), the trainer gets the checked absolute value.
        checked = {key: value for key, value in self.paths.checked_paths(stage, config).items() if value}
        items = [i for i in items if i.partition("=")[0].strip() not in checked]
        items += [f"{key}={value}" for key, value in checked.items()]
        self.workspace.mkdir(parents=True, exist_ok=True)
        try:
            run.path.mkdir()  # the reservation: exactly one of simultaneous launches with this name gets it
        except FileExistsError:
            raise UserError(f"a job named {name!r} already exists; resume it or choose another name") from None
        try:
            self._start(name, self.command(stage, run, preset, items))
        except BaseException:  # a launch that did not start leaves nothing behind, not a "died" job
            self.processes.pop(name, None)
            shutil.rmtree(run.path, ignore_errors=True)
            raise
        return name

    def resume(self, name: str) -> str:
        run = self.run_dir(name)
        with self._resuming:  # two resume requests at once: the second sees the first's process
            if not run.config_path.is_file():
                raise UserError(f"no job named {name!r} in {self.workspace}")
            if self.stopping(run):  # Stop then Resume at once: let it finish stopping
                self.wait_stopped(name, STOP_GRACE_S)
            if alive := self.live_pids(run):
                if self.stopping(run):
                    raise UserError(
                        f"job {name!r} is still stopping (writing its checkpoint, pid {alive[0]}); resume it again "
                        "in a moment"
                    )
                raise UserError(f"job {name!r} is still running (pid {alive[0]}); stop it first")
            status = run.read_status()
            if status.get("state") == "finished":
                raise UserError(f"job {name!r} has finished; launch a new job to train further")
            if run.latest_checkpoint() is None:
                raise UserError(f"job {name!r} has no complete checkpoint yet; launch it again under a new name")
            stage = run.read_stage() or "?"
            try:  # the run's own config is what a resume reads: its paths pass the same checks as a launch's
                config = load_train_config(stage, None, str(run.config_path))
            except (ValueError, KeyError, TypeError) as error:
                raise UserError(f"cannot resume job {name!r}: its config.json is not usable ({error})") from None
            self.paths.checked_paths(stage, config)
            self._start(name, self.command(stage, run, resume=True))
        return name

    def _start(self, name: str, args: list[str]) -> None:
        from maskbit.device import background_priority

        run = self.run_dir(name)
        run.path.mkdir(parents=True, exist_ok=True)
        run.stop_request_path.unlink(missing_ok=True)  # written by stop()
        env = {**os.environ, "PYTHONUNBUFFERED": "1"}
        try:
            with open(run.console_path, "ab") as console:  # the process's own stdout and stderr
                process = subprocess.Popen(
                    args,
                    stdout=console,
                    stderr=subprocess.STDOUT,
                    stdin=subprocess.DEVNULL,
                    cwd=PROJECT_ROOT,
                    env=env,
                    start_new_session=True,  # its own process group: stop() signals accelerate and the trainer
                )
        except OSError as error:
            raise UserError(f"could not start the training process: {error.strerror or error}") from None
        # Background work: the launcher (a Python start-up away from starting the trainer, which inherits it) at a
        # lower priority than the app's requests.
        with contextlib.suppress(AttributeError, OSError):
            os.setpriority(os.PRIO_PROCESS, process.pid, background_priority())
        self.processes[name] = process
        try:
            run.launcher_path.write_text(json.dumps({"pid": process.pid, "args": args, "started": time.time()}))
        except OSError:
            os.killpg(process.pid, signal.SIGKILL)  # unwatchable: stop it rather than leave it running unseen
            process.wait()
            raise

    def stop(self, name: str) -> str:
        run = self.run_dir(name)
        alive = self.live_pids(run)
        if not alive:
            if not run.path.is_dir():
                raise UserError(f"job {name!r} is not running: there is no job of that name")
            state = self.job(name).state
            if state == "finished":
                raise UserError(f"job {name!r} has already finished: there is nothing to stop")
            if state in ("stopped", "failed"):
                raise UserError(f"job {name!r} is not running: it has already {state}")
            raise UserError(f"job {name!r} is not running ({state}); resume it to continue")
        run.stop_request_path.write_text(json.dumps({"requested": time.time()}))
        for pid in alive:
            try:
                os.killpg(os.getpgid(pid), signal.SIGTERM)  # the trainer checkpoints, then exits
            except ProcessLookupError:
                pass
        return name

    # ------------------------------------------------------------------------------------------------ liveness

    def live_pids(self, run: RunDir) -> list[int]:
        """The job's processes still alive: the trainer (status.json) and the `accelerate launch` parent
        (launcher.json), which outlives the trainer by a moment. Empty is the one meaning of "the job has stopped"
        that resume, stop, the job table and callers waiting on a job share."""
        for process in self.processes.values():
            process.poll()  # reap finished children so that their pids stop looking alive
        pids = dict.fromkeys((run.read_status().get("pid"), self._launcher_pid(run)))
        return [pid for pid in pids if pid_alive(pid)]

    def is_running(self, name: str) -> bool:
        return bool(self.live_pids(self.run_dir(name)))

    def stopping(self, run: RunDir) -> bool:
        """A stop was asked for, or the trainer has written its last status, while a process still lives."""
        ended = run.read_status().get("state") in ("stopped", "finished", "failed")
        return run.stop_request_path.is_file() or ended

    def wait_stopped(self, name: str, timeout: float) -> bool:
        """Wait up to `timeout` seconds for every process of the job to exit; True when they have."""
        run = self.run_dir(name)
        deadline = time.monotonic() + timeout
        while self.live_pids(run):
            if time.monotonic() > deadline:
                return False
            time.sleep(0.1)
        return True

    def _launcher_pid(self, run: RunDir) -> int | None:
        try:
            return int(json.loads(run.launcher_path.read_text())["pid"])
        except (OSError, ValueError, KeyError, TypeError):
            return None

    # ------------------------------------------------------------------------------------------------ reading

    def names(self) -> list[str]:
        if not self.workspace.is_dir():
            return []
        found = [
            p
            for p in self.workspace.iterdir()
            if p.is_dir() and (RunDir(p).status_path.is_file() or RunDir(p).console_path.is_file())
        ]
        return [p.name for p in sorted(found, key=lambda p: p.stat().st_mtime, reverse=True) if NAME.match(p.name)]

    def find(self, name: str) -> Job | None:
        """The workspace's job of that name; None when there is none."""
        return self.job(name) if name in self.names() else None

    def job(self, name: str) -> Job:
        run = self.run_dir(name)
        alive = self.live_pids(run)
        status = run.read_status()
        state = status.get("state", "starting")
        pid = alive[0] if alive else None
        if state in ("starting", "running") and not alive:
            state = "died"  # killed without a chance to write its status (resume continues it)
        elif state in ("starting", "running") and run.stop_request_path.is_file():
            state = "stopping"
        error = status.get("last_error")
        if state in ("starting", "died") and not status:
            error = _own_lines(self.console_tail(name, CONSOLE_READ_LINES)).splitlines()[-3:]
            error = "\n".join(error) or None
        metrics = run.read_metrics()
        loss = next((m["loss"] for m in reversed(metrics) if "loss" in m), None)
        stage = run.read_stage() or "?"
        return Job(
            name,
            stage,
            state,
            int(status.get("step", 0)),
            int(status.get("total_steps", 0)),
            loss,
            pid if state in ("starting", "running", "stopping") else None,
            error,
            float(status.get("updated", 0)),
        )

    def table(self) -> list[list]:
        return [self.job(name).row() for name in self.names()]

    def metrics(self, name: str) -> list[dict]:
        return self.run_dir(name).read_metrics()

    def latest_sample(self, name: str) -> Path | None:
        samples = self.run_dir(name).samples_dir
        found = (
            sorted(samples.glob("step-*.png"), key=lambda p: int(re.sub(r"\D", "", p.stem) or 0))
            if samples.is_dir()
            else []
        )
        return found[-1] if found else None

    def console_tail(self, name: str, lines: int = 20) -> str:
        """The last lines of the job's console, read from its last 64 kB (the file grows for the whole run)."""
        path = self.run_dir(name).console_path
        if not path.is_file():
            return ""
        with open(path, "rb") as file:
            file.seek(max(0, path.stat().st_size - 65_536))
            text = file.read().decode("utf-8", "replace")
        return "\n".join(text.splitlines()[-lines:])

    def console_view(self, name: str, lines: int = 8) -> str:
        """What the Training tab's console shows: a failed (or died) job's own error first and whole, then the
        console's last `lines` lines without accelerate's launch notes and without the traceback accelerate adds when
        the trainer fails (a CalledProcessError that only repeats the command line)."""
        job = self.job(name)
        tail = "\n".join(_own_lines(self.console_tail(name, CONSOLE_READ_LINES)).splitlines()[-lines:])
        if job.state not in ("failed", "died") or not job.error:
            return tail
        return f"job {name} {job.state}: {job.error}\n\n── the console's last lines ──\n{tail}"

    def finished_models(self) -> list[str]:
        """The jobs that have exported a model (newest first): what the model panel offers to load."""
        return [name for name in self.names() if (self.run_dir(name).model_dir / "config.json").is_file()]

    def model_pair(self, name: str) -> tuple[str, str]:
        """(tokenizer, generator) sources of a job's exported model: a generator job's with the tokenizer it was
        trained on; a tokenizer job's alone (no generator was trained on its tokens)."""
        run = self.run_dir(name)
        model = run.model_dir
        if not (model / "config.json").is_file():
            if name not in self.names():
                raise UserError(f"no job named {name!r} in {self.workspace}")
            job = self.job(name)
            if job.state in ("failed", "died", "stopped"):
                cause = f": {job.error}" if job.error else ""
                then = (
                    "resume it to continue from its last checkpoint, then load it once it finishes"
                    if run.latest_checkpoint() is not None
                    else "it has no checkpoint to resume from: launch it again under a new name once the cause is fixed"
                )
                raise UserError(f"job {name!r} {job.state} before it exported a model{cause}; {then}")
            raise UserError(f"job {name!r} has no exported model yet (it is written when the job finishes)")
        if self.job(name).stage == "generator":
            return str(run.read_config().get("tokenizer", "")), str(model)
        return str(model), ""


def _own_lines(console: str) -> str:
    """The console's lines less what accelerate adds, which is no error of the job: its note on the launch values it
    chose, and, after a trainer that failed, its own traceback ending in `subprocess.CalledProcessError` (the
    trainer's traceback, with the cause, comes before it)."""
    lines = [line for line in console.splitlines() if not LAUNCHER_NOTE.match(line)]
    starts = [i for i, line in enumerate(lines) if line.startswith("Traceback (most recent call last):")]
    if starts and any(line.startswith(LAUNCHER_FAILURE) for line in lines[starts[-1] :]):
        lines = lines[: starts[-1]]
    return "\n".join(lines)
