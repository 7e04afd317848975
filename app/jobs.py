"""Training jobs started from the app: `accelerate launch -m train ...` processes, watched through run directories.

The app never holds the truth about a job: each job is a run directory under the workspace (config.json,
status.json with the trainer's pid, metrics.jsonl, samples/, model/), so jobs survive an app restart. Processes
are started from argument lists (no shell) in their own session, and stopped by signalling that whole process
group; SIGTERM makes the trainer write a checkpoint and stop, so a stopped job can be resumed.
"""

from __future__ import annotations

import json
import os
import re
import signal
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path

from app.explorer import UserError
from train.config import GENERATOR_TRAIN_PRESETS, TOKENIZER_TRAIN_PRESETS, apply_overrides, load_train_config
from train.rundir import RunDir

__all__ = ["Jobs", "Job", "STAGES", "PRESETS"]

STAGES = ("tokenizer", "generator")
PRESETS = {"tokenizer": sorted(TOKENIZER_TRAIN_PRESETS), "generator": sorted(GENERATOR_TRAIN_PRESETS)}
NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.-]{0,63}$")
CONSOLE = "console.txt"  # the process's own stdout and stderr


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
    def __init__(self, workspace: str | Path, data_roots: list[str | Path] = ()):
        self.workspace = Path(workspace).resolve()
        self.data_roots = [Path(p).resolve() for p in data_roots]
        self.processes: dict[str, subprocess.Popen] = {}  # started by this app instance (reaped here)

    # ------------------------------------------------------------------------------------------------ paths

    def run_dir(self, name: str) -> RunDir:
        if not isinstance(name, str) or not NAME.match(name):
            raise UserError(
                f"job name {name!r} is invalid: use 1–64 letters, digits, _ - or ., starting with a letter or digit"
            )
        return RunDir(self.workspace / name)

    def checked_dataset(self, dataset: str) -> str:
        """'procedural', or a folder / tar-shard pattern inside the allowed data roots or the workspace."""
        dataset = (dataset or "").strip()
        if dataset in ("", "procedural"):
            return "procedural"
        path = Path(dataset).expanduser()
        resolved = (path if path.is_absolute() else Path.cwd() / path).resolve()
        roots = [self.workspace, *self.data_roots]
        if not any(resolved == root or root in resolved.parents for root in roots):
            raise UserError(
                f"dataset {dataset!r} is outside the allowed folders ({', '.join(map(str, roots))}); "
                "put it there or start the app with --data-root"
            )
        target = resolved if "{" not in resolved.name else resolved.parent
        if not target.exists():
            raise UserError(f"dataset {dataset!r} does not exist")
        return str(resolved)

    # ------------------------------------------------------------------------------------------------ commands

    def command(self, stage: str, run: RunDir, preset: str = "", overrides: list[str] = (), resume: bool = False):
        from maskbit.device import mixed_precision, pick_device

        # One process on the device the app uses. The trainer hands accelerate its config's training.mixed_precision
        # ("auto": bf16 on CUDA, no on the CPU), which wins over the launcher's default given here.
        device = pick_device()
        launcher = Path(sys.executable).with_name("accelerate")  # the venv's `accelerate` script
        head = [str(launcher), "launch"] if launcher.is_file() else [sys.executable, "-m", "accelerate.commands.launch"]
        head += ["--num_processes", "1", "--num_machines", "1", "--mixed_precision", mixed_precision("auto", device)]
        head += ["--dynamo_backend", "no"]
        if device.type == "cpu":
            head.append("--cpu")
        args = head + ["-m", "train", stage, "--run-dir", str(run.path)]
        if resume:
            return args + ["--resume"]
        return args + ["--preset", preset] + (["--set", *overrides] if overrides else [])

    def launch(self, stage: str, name: str, preset: str, dataset: str = "procedural", overrides: str = "") -> str:
        """Validate everything a user typed (the config is resolved here first), then start the process."""
        if stage not in STAGES:
            raise UserError(f"stage must be one of {', '.join(STAGES)}, got {stage!r}")
        if preset not in PRESETS[stage]:
            raise UserError(f"unknown {stage} preset {preset!r}; presets: {', '.join(PRESETS[stage])}")
        run = self.run_dir(name)
        if run.path.exists() and any(run.path.iterdir()):
            raise UserError(
                f"a job named {name!r} already exists in {self.workspace}; resume it or choose another name"
            )
        items = [line.strip() for line in re.split(r"[\n]+", overrides or "") if line.strip()]
        items = [part for line in items for part in line.split()]
        data = self.checked_dataset(dataset)
        if data != "procedural" or not any(i.startswith("data.dataset=") for i in items):
            items = [i for i in items if not i.startswith("data.dataset=")] + [f"data.dataset={data}"]
        try:
            apply_overrides(load_train_config(stage, preset, None), items)
        except (ValueError, KeyError, TypeError) as error:
            raise UserError(str(error)) from None
        self._start(name, self.command(stage, run, preset, items))
        return name

    def resume(self, name: str) -> str:
        run = self.run_dir(name)
        status = run.read_status()
        if not run.config_path.is_file():
            raise UserError(f"no job named {name!r} in {self.workspace}")
        if pid_alive(status.get("pid")):
            raise UserError(f"job {name!r} is still running (pid {status['pid']})")
        if status.get("state") == "finished":
            raise UserError(f"job {name!r} has finished; launch a new job to train further")
        if run.latest_checkpoint() is None:
            raise UserError(f"job {name!r} has no complete checkpoint yet; launch it again under a new name")
        self._start(name, self.command(status.get("stage", "tokenizer"), run, resume=True))
        return name

    def _start(self, name: str, args: list[str]) -> None:
        run = self.run_dir(name)
        run.path.mkdir(parents=True, exist_ok=True)
        env = {**os.environ, "PYTHONUNBUFFERED": "1"}
        with open(run.path / CONSOLE, "ab") as console:
            process = subprocess.Popen(
                args,
                stdout=console,
                stderr=subprocess.STDOUT,
                stdin=subprocess.DEVNULL,
                cwd=Path(__file__).resolve().parent.parent,
                env=env,
                start_new_session=True,  # its own process group: stop() signals accelerate and the trainer together
            )
        self.processes[name] = process
        (run.path / "launcher.json").write_text(json.dumps({"pid": process.pid, "args": args, "started": time.time()}))

    def stop(self, name: str) -> str:
        run = self.run_dir(name)
        pids = [run.read_status().get("pid"), self._launcher_pid(run)]
        alive = [p for p in pids if pid_alive(p)]
        if not alive:
            raise UserError(f"job {name!r} is not running")
        for pid in alive:
            try:
                os.killpg(os.getpgid(pid), signal.SIGTERM)  # the trainer checkpoints, then exits
            except ProcessLookupError:
                pass
        return name

    def _launcher_pid(self, run: RunDir) -> int | None:
        try:
            return int(json.loads((run.path / "launcher.json").read_text())["pid"])
        except (OSError, ValueError, KeyError, TypeError):
            return None

    # ------------------------------------------------------------------------------------------------ reading

    def names(self) -> list[str]:
        if not self.workspace.is_dir():
            return []
        found = [
            p
            for p in self.workspace.iterdir()
            if p.is_dir() and ((p / "status.json").is_file() or (p / CONSOLE).is_file())
        ]
        return [p.name for p in sorted(found, key=lambda p: p.stat().st_mtime, reverse=True) if NAME.match(p.name)]

    def job(self, name: str) -> Job:
        for process in self.processes.values():
            process.poll()  # reap finished children so that their pids stop looking alive
        run = self.run_dir(name)
        status = run.read_status()
        state = status.get("state", "starting")
        pid = status.get("pid") or self._launcher_pid(run)
        if state in ("starting", "running") and not pid_alive(pid) and not pid_alive(self._launcher_pid(run)):
            state, pid = "died", None  # killed without a chance to write its status (resume continues it)
        error = status.get("last_error")
        if state in ("starting", "died") and not status:
            error = self.console_tail(name, 3) or error
        metrics = run.read_metrics()
        loss = next((m["loss"] for m in reversed(metrics) if "loss" in m), None)
        stage = status.get("stage") or _stage_from_config(run)
        return Job(
            name,
            stage,
            state,
            int(status.get("step", 0)),
            int(status.get("total_steps", 0)),
            loss,
            pid if state in ("starting", "running") else None,
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
        path = self.run_dir(name).path / CONSOLE
        if not path.is_file():
            return ""
        return "\n".join(path.read_text(errors="replace").splitlines()[-lines:])

    def model(self, name: str) -> tuple[str, Path, str]:
        """(stage, exported model directory, the tokenizer it was trained with) of a job that has one."""
        run = self.run_dir(name)
        model = run.path / "model"
        if not (model / "config.json").is_file():
            raise UserError(f"job {name!r} has no exported model yet (it is written when the job finishes)")
        config = json.loads(run.config_path.read_text())
        stage = self.job(name).stage
        return stage, model, str(config.get("tokenizer", ""))


def _stage_from_config(run: RunDir) -> str:
    try:
        return "generator" if "tokenizer" in json.loads(run.config_path.read_text()) else "tokenizer"
    except (OSError, json.JSONDecodeError):
        return "?"
