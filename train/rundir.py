"""The run directory of one training job (docs/ARCHITECTURE.md, "Contracts"):

config.json        the resolved config (all a resume needs)
metrics.jsonl      append-only, one JSON object per logged step; after a resume a step may appear twice, the
                   later line wins (`read_metrics`)
status.json        state, pid, step, total steps, last error; rewritten atomically
checkpoints/step-N/  everything an exact resume needs, plus model/ (EMA weights, loadable by from_pretrained);
                   written under a temporary name and renamed when complete
samples/step-N.png, log.txt
model/             the exported model (EMA weights, loadable by from_pretrained), written when the run finishes

A job the app started (app/jobs.py) also has console.txt (the process's output), launcher.json (the
`accelerate launch` pid) and, while a stop is asked for, stop-requested.json.
"""

from __future__ import annotations

import json
import os
import re
import shutil
import time
from pathlib import Path
from typing import Any

from maskbit.files import write_json_atomic

__all__ = ["RunDir", "STATES"]

STATES = ("starting", "running", "finished", "stopped", "failed")
CHECKPOINT = re.compile(r"^step-(\d+)$")
COMPLETE_MARKER = "checkpoint.json"


class RunDir:
    def __init__(self, path: str | Path):
        self.path = Path(path)

    @property
    def config_path(self) -> Path:
        return self.path / "config.json"

    @property
    def metrics_path(self) -> Path:
        return self.path / "metrics.jsonl"

    @property
    def status_path(self) -> Path:
        return self.path / "status.json"

    @property
    def checkpoints_dir(self) -> Path:
        return self.path / "checkpoints"

    @property
    def samples_dir(self) -> Path:
        return self.path / "samples"

    @property
    def log_path(self) -> Path:
        return self.path / "log.txt"

    @property
    def model_dir(self) -> Path:
        return self.path / "model"

    # The app's own files (app/jobs.py)

    @property
    def console_path(self) -> Path:
        return self.path / "console.txt"

    @property
    def launcher_path(self) -> Path:
        return self.path / "launcher.json"

    @property
    def stop_request_path(self) -> Path:
        return self.path / "stop-requested.json"

    def create(self) -> None:
        for folder in (self.path, self.checkpoints_dir, self.samples_dir):
            folder.mkdir(parents=True, exist_ok=True)

    # -------------------------------------------------------------------------------------------- config, status

    def write_config(self, config: dict[str, Any]) -> None:
        write_json_atomic(self.config_path, config)

    def read_config(self) -> dict[str, Any]:
        if not self.config_path.is_file():
            raise FileNotFoundError(f"{self.path} is not a run directory: {self.config_path.name} is missing")
        return json.loads(self.config_path.read_text())

    def write_status(self, **fields: Any) -> dict[str, Any]:
        status = {**self.read_status(), **fields, "updated": time.time()}
        write_json_atomic(self.status_path, status)
        return status

    def read_status(self) -> dict[str, Any]:
        try:
            return json.loads(self.status_path.read_text())
        except (FileNotFoundError, json.JSONDecodeError):
            return {}

    def read_stage(self) -> str | None:
        """'tokenizer' or 'generator': as status.json says, else as config.json shows (a generator's config names
        its tokenizer); None when neither can be read."""
        if stage := self.read_status().get("stage"):
            return stage
        try:
            return "generator" if "tokenizer" in json.loads(self.config_path.read_text()) else "tokenizer"
        except (OSError, json.JSONDecodeError):
            return None

    # -------------------------------------------------------------------------------------------- metrics

    def append_metrics(self, record: dict[str, Any]) -> None:
        with open(self.metrics_path, "a") as file:
            file.write(json.dumps(record) + "\n")
            file.flush()

    def read_metrics(self) -> list[dict[str, Any]]:
        """One record per step in step order, the last written winning; torn or foreign lines skipped."""
        by_step: dict[int, dict[str, Any]] = {}
        if not self.metrics_path.is_file():
            return []
        for line in self.metrics_path.read_text().splitlines():
            try:
                record = json.loads(line)
            except json.JSONDecodeError:
                continue  # a line cut by a kill
            if isinstance(record, dict) and isinstance(record.get("step"), int):
                by_step[record["step"]] = record
        return [by_step[s] for s in sorted(by_step)]

    # -------------------------------------------------------------------------------------------- checkpoints

    def checkpoints(self) -> list[tuple[int, Path]]:
        """Complete checkpoints, oldest first."""
        found = []
        if self.checkpoints_dir.is_dir():
            for child in self.checkpoints_dir.iterdir():
                match = CHECKPOINT.match(child.name)
                if match and (child / COMPLETE_MARKER).is_file():
                    found.append((int(match.group(1)), child))
        return sorted(found)

    def latest_checkpoint(self) -> tuple[int, Path] | None:
        found = self.checkpoints()
        return found[-1] if found else None

    def commit_checkpoint(self, tmp: Path, step: int, meta: dict[str, Any], keep_last: int) -> Path:
        """Mark `tmp` complete, rename it to step-N, and delete all but the newest `keep_last` checkpoints."""
        write_json_atomic(tmp / COMPLETE_MARKER, {"step": step, **meta})
        final = self.checkpoints_dir / f"step-{step}"
        if final.exists():
            shutil.rmtree(final)
        os.replace(tmp, final)
        for _, old in self.checkpoints()[:-keep_last]:
            shutil.rmtree(old, ignore_errors=True)
        return final

    def remove_partial_checkpoints(self) -> None:
        """Temporary folders left by a crash or a kill."""
        if self.checkpoints_dir.is_dir():
            for child in self.checkpoints_dir.iterdir():
                if child.name.startswith(".tmp-") or (
                    CHECKPOINT.match(child.name) and not (child / COMPLETE_MARKER).is_file()
                ):
                    shutil.rmtree(child, ignore_errors=True)
