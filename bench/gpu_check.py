"""Every GPU path end to end, with figures: one script for a GPU machine, and its --smoke twin for a CPU.

    .venv/bin/python -m bench.gpu_check --out bench/results/gpu_check     # on one GPU, sized for ≤ 8 minutes
    .venv/bin/python -m bench.gpu_check --smoke --out /tmp/gpu_check       # CPU, tiny sizes, same code paths

Sections, each timed; a failing section is recorded and the rest still run (exit status 1 at the end):
  sampling   s/step at B = 1, 8, 32 for ours and the official-style loop, each in fp32 and bf16 autocast, on the real
             12-bit generator (random weights) and the bundled model; bf16 guided logits' error against fp32
  tokenizer  encode and decode images/s in fp32 and bf16 (the real 12-bit tokenizer at 256², random weights; the
             bundled one), with the bits bf16 flips and its decoded images' error
  search     exact Hamming k-NN over 1.28M random 3072-bit codes: FAISS on the CPU, torch on the device
             (indexes.backends.TorchFlat) and FAISS GPU (GpuIndexBinaryFlat, when faiss has GPU support); every
             backend must return FAISS-CPU's distances; and which one an index on this device uses (`place`)
  lpips      the LPIPS embedding's images/s on the device, and its distances against the CPU's
  index      an index of the procedural dataset built and calibrated on the device (the app then serves it)
  training   20 steps of each stage through `accelerate launch -m train` (real 12-bit presets, random weights,
             training.mixed_precision auto: bf16 on CUDA), with the device and precision the trainer resolved
  app        `python -m app` (bundled model, on the device) and one call of every API endpoint (ENDPOINTS)

--smoke swaps in the `tiny` presets and small counts (SMOKE) and runs on the CPU in under a minute;
tests/test_gpu_check.py runs it. Writes gpu_check.json and gpu_check.md to --out.
"""

from __future__ import annotations

import argparse
import dataclasses
import functools
import json
import os
import platform
import resource
import socket
import subprocess
import sys
import tempfile
import time
import traceback
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

ROOT = Path(__file__).resolve().parent.parent

# One call of every API endpoint of the app, in order: (api_name, positional arguments). Arguments are positional,
# so renamed parameters need no change here; a reordered or new one does. Placeholders, filled in at run time:
# CLASS (the bundled model's first class name), IMAGE (the first generated image), JOB (a training job this check
# launches, stops and resumes from the app), RUN (the finished tokenizer run of the training section).
CLASS, IMAGE, JOB, RUN = "<class>", "<image>", "<job>", "<run>"
ENDPOINTS: list[tuple[str, tuple]] = [
    ("model_info", ()),
    ("index_status", ()),
    ("generate", ([CLASS], 2, 0, 16, 4.0, "none", 1.0, 2.0, 1.0, "arccos")),
    ("dataset_image", (3,)),
    ("flip_bits", (IMAGE, "0, 5, 11", "all")),
    ("compare_flips", (IMAGE, "default-vq", "0, 5, 11", "all")),
    ("token_map", (IMAGE,)),
    ("bit_walk", (IMAGE, 4, 3, 0)),
    ("neighbours", (IMAGE, 3)),
    ("memorization_report", (4, 0)),
    ("token_space", ()),
    ("code_atlas", ()),
    ("indexed_image", (0,)),
    ("training_image", (0,)),
    # after the heavy calls, so that the job's training does not share the CPU with them; it runs until train_stop
    ("train_launch", ("tokenizer", JOB, "tiny", "procedural", "training.max_steps=100000 training.save_every=1")),
    ("train_status", ()),
    ("train_curves", (JOB,)),
    ("train_stop", (JOB,)),
    ("train_resume", (JOB,)),
    ("load_models", ("default", "default")),
    ("train_load", (RUN,)),
]


@dataclass(frozen=True)
class Sizes:
    generator: str  # the real-size slot: a generator preset (and its training preset)
    tokenizer: str  # a tokenizer preset (and its training preset)
    batches: tuple[int, ...]  # sampling batch sizes
    steps: int  # sampling steps timed per run
    image_batch: int  # tokenizer encode/decode batch
    codes: int  # Hamming search: database size, 3072-bit codes
    queries: int
    lpips_images: int
    lpips_size: int
    index_limit: int  # procedural images in the app's index
    heldout: int  # held-out images that calibrate it
    train_steps: int
    train_batch: int
    repeats: int = 2  # timed calls after the warm-up; the fastest counts


FULL = Sizes(
    "maskbit_generator_12bit", "maskbit_tokenizer_12bit", (1, 8, 32), 4, 32, 1_280_000, 100, 256, 256, 1000, 500, 20, 8
)
SMOKE = Sizes("tiny", "tiny", (1, 2), 1, 1, 2_000, 4, 4, 64, 4, 8, 2, 2, repeats=1)


@dataclass
class App:
    process: subprocess.Popen
    url: str
    started: float

    def stop(self) -> None:
        self.process.terminate()
        try:
            self.process.wait(30)
        except subprocess.TimeoutExpired:
            self.process.kill()


@dataclass
class Check:
    device: torch.device
    sizes: Sizes
    work: Path  # scratch: saved random models, the index, run directories
    smoke: bool
    app: App | None = None  # started early by --smoke, so that its start-up overlaps the training section


# ------------------------------------------------------------------------------------------------------ helpers


def synchronize() -> None:
    if torch.cuda.is_initialized():
        torch.cuda.synchronize()


def timed(fn: Callable[[], object], repeats: int = 2) -> float:
    """Seconds of the fastest of `repeats` calls, after one warm-up call."""
    fn()
    best = float("inf")
    for _ in range(repeats):
        synchronize()
        start = time.perf_counter()
        fn()
        synchronize()
        best = min(best, time.perf_counter() - start)
    return best


def cpu_seconds() -> float:
    """CPU time of this process and of its finished children (the app, the trainers)."""
    own, children = resource.getrusage(resource.RUSAGE_SELF), resource.getrusage(resource.RUSAGE_CHILDREN)
    return own.ru_utime + own.ru_stime + children.ru_utime + children.ru_stime


def rounded(value, digits: int = 4):
    if isinstance(value, float):
        return float(f"{value:.{digits}g}")
    if isinstance(value, dict):
        return {k: rounded(v, digits) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [rounded(v, digits) for v in value]
    return value


def real_size_models(check: Check):
    from maskbit import GENERATOR_PRESETS, TOKENIZER_PRESETS, Generator, Tokenizer

    torch.manual_seed(0)
    generator = Generator(GENERATOR_PRESETS[check.sizes.generator])
    tokenizer = Tokenizer(TOKENIZER_PRESETS[check.sizes.tokenizer])
    return generator.eval().requires_grad_(False), tokenizer.eval().requires_grad_(False)


# ------------------------------------------------------------------------------------------------------ sections


def check_sampling(check: Check) -> list[dict]:
    from bench.sampling_speed import logits_error, official_loop, run_ours
    from maskbit import SAMPLING_PRESETS, Generator

    generator, _ = real_size_models(check)
    rows = []
    for name, model in ((check.sizes.generator, generator), ("default", Generator.from_pretrained("default"))):
        model = model.eval().requires_grad_(False).to(check.device)
        base = SAMPLING_PRESETS.get(name, SAMPLING_PRESETS["maskbit_generator_12bit"])
        sampling = dataclasses.replace(base, num_steps=check.sizes.steps, guidance_annealing="none")
        for batch in check.sizes.batches:
            labels = torch.arange(batch) % model.config.num_classes
            for precision in ("fp32", "bf16"):
                run = (model, labels, sampling, precision)
                ours = timed(functools.partial(run_ours, *run), check.sizes.repeats) / sampling.num_steps
                official = timed(functools.partial(official_loop, *run), check.sizes.repeats) / sampling.num_steps
                rows.append(
                    {
                        "model": name,
                        "batch": batch,
                        "precision": precision,
                        "ours_s_per_step": ours,
                        "official_style_s_per_step": official,
                        "speed_up": official / ours,
                        "images_per_s_at_64_steps": batch / (ours * 64),
                    }
                )
        labels = torch.arange(2) % model.config.num_classes
        error = logits_error(model, labels, dataclasses.replace(base, num_steps=2 if check.smoke else 8))
        rows.append({"model": name, "bf16_logits_vs_fp32": error})
    return rows


def check_tokenizer(check: Check) -> list[dict]:
    from maskbit import Tokenizer

    _, tokenizer = real_size_models(check)
    rows = []
    for name, model in ((check.sizes.tokenizer, tokenizer), ("default", Tokenizer.from_pretrained("default"))):
        model = model.eval().requires_grad_(False).to(check.device)
        size, batch = model.config.image_size, check.sizes.image_batch
        images = torch.rand(batch, 3, size, size, generator=torch.Generator().manual_seed(0)).to(check.device)
        results = {}
        for precision in ("fp32", "bf16"):
            model.precision = precision
            indices = model.encode(images)
            results[precision] = (indices, model.decode(indices))
            rows.append(
                {
                    "model": name,
                    "image_size": size,
                    "batch": batch,
                    "precision": precision,
                    "encode_images_per_s": batch / timed(functools.partial(model.encode, images), check.sizes.repeats),
                    "decode_images_per_s": batch / timed(functools.partial(model.decode, indices), check.sizes.repeats),
                }
            )
        model.precision = "auto"
        (exact, decoded), (approx, _) = results["fp32"], results["bf16"]
        flipped = ((exact ^ approx)[..., None] >> torch.arange(model.num_bits, device=exact.device)) & 1
        model.precision = "bf16"
        error = (model.decode(exact) - decoded).abs().max()
        model.precision = "auto"
        rows.append(
            {"model": name, "bf16_bits_flipped": float(flipped.float().mean()), "bf16_decode_max_error": float(error)}
        )
    return rows


def check_search(check: Check) -> list[dict]:
    import faiss

    from indexes.backends import TorchFlat, faiss_has_gpu, place

    n, q, k = check.sizes.codes, check.sizes.queries, 10
    rng = np.random.default_rng(0)
    codes = rng.integers(0, 256, size=(n, 384), dtype=np.uint8)  # 3072 bits: 16×16 tokens × 12 bits
    queries = np.concatenate([codes[rng.choice(n, q // 2, replace=False)], rng.integers(0, 256, (q - q // 2, 384))])
    queries = queries.astype(np.uint8)
    rows, reference = [], None

    def measure(backend: str, build: Callable[[], object]) -> None:
        nonlocal reference
        start = time.perf_counter()
        index = build()
        synchronize()
        built = time.perf_counter() - start
        distances, _ = index.search(queries, k)
        search = timed(lambda: index.search(queries, k), repeats=1)
        if reference is None:
            reference = distances
        rows.append(
            {
                "backend": backend,
                "codes": n,
                "queries": q,
                "build_s": built,
                "ms_per_query": 1000 * search / q,
                "distances_equal_faiss_cpu": bool(np.array_equal(distances, reference)),
            }
        )

    cpu = faiss.IndexBinaryFlat(3072)
    measure(f"faiss CPU ({faiss.omp_get_max_threads()} threads)", lambda: (cpu.add(codes), cpu)[1])
    measure(f"torch on {check.device} (TorchFlat)", lambda: TorchFlat.from_faiss(cpu, check.device))
    if faiss_has_gpu():
        measure("faiss GPU (GpuIndexBinaryFlat)", lambda: place(cpu, check.device))
    else:
        rows.append({"backend": "faiss GPU", "skipped": "this faiss has no GPU support or sees no GPU"})
    rows.append({"an index on this device is searched by": type(place(cpu, check.device)).__name__})
    if not all(row.get("distances_equal_faiss_cpu", True) for row in rows):
        raise AssertionError(f"a backend's distances differ from FAISS on the CPU: {rows}")
    return rows


def check_lpips(check: Check) -> list[dict]:
    from indexes.lpips_embedding import LPIPSEmbedding, has_weights

    random_backbone = not has_weights("alex")
    embedding = LPIPSEmbedding("alex", random_backbone=random_backbone).to(check.device)
    n, size = check.sizes.lpips_images, check.sizes.lpips_size
    images = torch.rand(n, 3, size, size, generator=torch.Generator().manual_seed(0))
    batch = 32

    def embed_all():
        for first in range(0, n, batch):
            embedding(images[first : first + batch].to(check.device))

    seconds = timed(embed_all, repeats=1)
    on_device = embedding(images[:2].to(check.device)).cpu()
    on_cpu = (
        LPIPSEmbedding("alex", random_backbone=random_backbone)(images[:2]) if check.device.type != "cpu" else on_device
    )
    d_device, d_cpu = (on_device[0] - on_device[1]).pow(2).sum(), (on_cpu[0] - on_cpu[1]).pow(2).sum()
    return [
        {
            "backbone": f"AlexNet, {embedding.source}",
            "image_size": size,
            "images": n,
            "images_per_s": n / seconds,
            "dimensions": on_device.shape[1],
            "lpips_relative_difference_device_vs_cpu": float((d_device - d_cpu).abs() / d_cpu),
        }
    ]


def check_index(check: Check) -> list[dict]:
    from data import heldout_images
    from indexes.build import build_dataset_index, calibrate
    from indexes.lpips_embedding import has_weights
    from indexes.store import IndexOptions
    from maskbit import Tokenizer

    tokenizer = Tokenizer.from_pretrained("default").requires_grad_(False).to(check.device)
    directory = check.work / "index"
    start = time.perf_counter()
    index = build_dataset_index(
        directory,
        tokenizer,
        limit=check.sizes.index_limit,
        options=IndexOptions(random_lpips_backbone=not has_weights("alex")),
    )
    built = time.perf_counter() - start
    heldout = heldout_images("procedural", check.sizes.heldout, index.image_size)
    start = time.perf_counter()
    calibrate(index, heldout)
    calibrated = time.perf_counter() - start
    found = index.search(heldout[:2], k=3)
    return [
        {
            "images": len(index),
            "metrics": list(index.metrics),
            "build_s": built,
            "images_per_s": len(index) / built,
            "calibrate_s": calibrated,
            "searched_by": {metric: type(flat).__name__ for metric, flat in index.flat.items()},
            "nearest_hamming_distances": found["hamming"].distances[:, 0].tolist(),
        }
    ]


def accelerate_command(check: Check, stage: str, run_dir: Path, preset: str, overrides: list[str]) -> list[str]:
    from maskbit.device import mixed_precision

    launcher = Path(sys.executable).with_name("accelerate")
    head = [str(launcher), "launch"] if launcher.is_file() else [sys.executable, "-m", "accelerate.commands.launch"]
    head += ["--num_processes", "1", "--num_machines", "1", "--dynamo_backend", "no"]
    head += ["--mixed_precision", mixed_precision("auto", check.device)]
    head += ["--cpu"] if check.device.type == "cpu" else []
    return head + ["-m", "train", stage, "--run-dir", str(run_dir), "--preset", preset, "--set", *overrides]


def check_training(check: Check) -> list[dict]:
    """Both stages through `accelerate launch`, in the workspace the app section serves (RUN is the tokenizer's)."""
    from maskbit import TOKENIZER_PRESETS, Tokenizer

    s, workspace = check.sizes, check.work / "runs"
    tokenizer_dir = check.work / "random-tokenizer"  # the generator stage's tokenizer: real size, random weights
    torch.manual_seed(0)
    Tokenizer(TOKENIZER_PRESETS[s.tokenizer]).save_pretrained(tokenizer_dir)
    resolution = TOKENIZER_PRESETS[s.tokenizer].image_size
    common = [
        f"training.max_steps={s.train_steps}",
        f"training.batch_size={s.train_batch}",
        "training.log_every=1",
        f"training.save_every={s.train_steps}",
        f"training.sample_every={s.train_steps}",
        "training.num_samples=4",
        "data.dataset=procedural",
        f"data.resolution={resolution}",
        "data.num_workers=0",
    ]
    jobs = {
        "tokenizer": (s.tokenizer, [*common, "loss.perceptual=none"]),  # the ResNet-50 weights are a download
        "generator": (s.generator, [*common, f"tokenizer={tokenizer_dir}"]),
    }
    processes, rows = {}, []
    for stage, (preset, overrides) in jobs.items():
        run_dir = workspace / f"check-{stage}"
        log = open(check.work / f"train-{stage}.log", "wb")  # noqa: SIM115 (closed below)
        command = accelerate_command(check, stage, run_dir, preset, overrides)
        process = subprocess.Popen(command, cwd=ROOT, stdout=log, stderr=subprocess.STDOUT)
        processes[stage] = (process, log, time.time())
        if not check.smoke:  # one at a time on the GPU, so that each stage's steps/s is its own
            processes[stage][0].wait()
    for stage, (process, log, started) in processes.items():
        code = process.wait(timeout=1200)
        log.close()
        run_dir = workspace / f"check-{stage}"
        status = json.loads((run_dir / "status.json").read_text()) if (run_dir / "status.json").is_file() else {}
        if code != 0 or status.get("state") != "finished":
            tail = (check.work / f"train-{stage}.log").read_text(errors="replace")[-2000:]
            raise AssertionError(f"the {stage} stage did not finish (exit {code}): {tail}")
        records = [json.loads(line) for line in (run_dir / "metrics.jsonl").read_text().splitlines() if line.strip()]
        times = [r["time"] for r in records if "step" in r and "time" in r]
        rows.append(
            {
                "stage": stage,
                "preset": jobs[stage][0],
                "exit_code": code,
                "state": status.get("state"),
                "device": status.get("device"),
                "mixed_precision": status.get("mixed_precision"),
                "steps": status.get("step"),
                "steps_per_s_after_the_first": (len(times) - 1) / (times[-1] - times[0]) if len(times) > 1 else None,
                "wall_s": time.time() - started,
                "exported_model": (run_dir / "model" / "config.json").is_file(),
            }
        )
    return rows


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def wait_until(predicate: Callable[[], bool], timeout: float, what: str) -> None:
    deadline = time.time() + timeout
    while not predicate():
        if time.time() > deadline:
            raise TimeoutError(f"timed out waiting for {what}")
        time.sleep(0.2)


def start_app(check: Check) -> App:
    """`python -m app` on the device, serving the bundled model and the index section's index."""
    from indexes.lpips_embedding import has_weights

    port = free_port()
    command = [sys.executable, "-m", "app", "--port", str(port), "--workspace", str(check.work / "runs")]
    command += ["--index", str(check.work / "index"), "--index-limit", str(check.sizes.index_limit)]
    command += ["--random-lpips-backbone"] if not has_weights("alex") else []
    env = {**os.environ, "GRADIO_ANALYTICS_ENABLED": "False", "HF_HUB_OFFLINE": "1"}
    if check.device.type == "cpu":
        env["CUDA_VISIBLE_DEVICES"] = ""  # the app's own device rule then says CPU too
    with open(check.work / "app.log", "wb") as log:
        process = subprocess.Popen(command, cwd=ROOT, env=env, stdout=log, stderr=subprocess.STDOUT)
    return App(process, f"http://127.0.0.1:{port}/", time.time())


def check_app(check: Check) -> list[dict]:
    """The app (`start_app`) and one call of every API endpoint in ENDPOINTS."""
    from gradio_client import Client, handle_file

    from app.jobs import Jobs
    from bench.app_speed import wait_http
    from maskbit.checkpoint import DEFAULT_MODEL_DIR
    from train.rundir import RunDir

    workspace, job = check.work / "runs", "check-app-job"
    app, check.app = check.app or start_app(check), None
    rows = []
    try:
        wait_http(app.url, app.process, 300)
        rows.append({"endpoint": "(start to HTTP)", "seconds": time.time() - app.started})
        client = Client(app.url, verbose=False)
        named = {name.strip("/") for name in client.view_api(print_info=False, return_format="dict")["named_endpoints"]}
        if named - {name for name, _ in ENDPOINTS}:
            raise AssertionError(f"ENDPOINTS has no call of {sorted(named - {n for n, _ in ENDPOINTS})}: add them")
        wait_until(lambda: not client.predict(api_name="/index_status").startswith("⏳"), 600, "the app's index")
        rows.append({"endpoint": "(start to index ready)", "seconds": time.time() - app.started})
        values = {CLASS: json.loads((DEFAULT_MODEL_DIR / "generator" / "classes.json").read_text())[0], JOB: job}
        values[RUN] = "check-tokenizer"

        def fill(value):
            if isinstance(value, list):
                return [fill(v) for v in value]
            if value == IMAGE:
                return handle_file(values[IMAGE])
            return values.get(value, value) if isinstance(value, str) else value

        for api_name, arguments in ENDPOINTS:
            args = [fill(a) for a in arguments]
            if api_name == "train_stop":  # the launched job has a checkpoint to resume from
                wait_until(lambda: RunDir(workspace / job).latest_checkpoint() is not None, 300, "a checkpoint")
            elif api_name == "train_resume":  # and has stopped: trainer and launcher, as the app's resume sees it
                wait_until(lambda: not Jobs(workspace).is_running(job), 120, "the job to stop")
            start = time.perf_counter()
            try:
                result = client.predict(*args, api_name=f"/{api_name}")
                rows.append({"endpoint": api_name, "seconds": time.perf_counter() - start, "ok": True})
            except Exception as error:  # recorded; the other endpoints still run
                rows.append({"endpoint": api_name, "ok": False, "error": f"{type(error).__name__}: {error}"[:300]})
                continue
            if api_name == "generate":
                values[IMAGE] = result[0][0]["image"]
            elif api_name == "model_info":
                rows[-1]["device"] = result.get("device")
        failed = [r["endpoint"] for r in rows if r.get("ok") is False]
        if failed:
            raise AssertionError(f"endpoints failed: {failed}: {[r for r in rows if r.get('ok') is False]}")
        return rows
    finally:
        try:  # the resumed job (jobs outlive the app by design)
            Jobs(workspace).stop(job)
        except ValueError:  # not running
            pass
        app.stop()


SECTIONS: dict[str, Callable[[Check], list[dict]]] = {
    "sampling": check_sampling,
    "tokenizer": check_tokenizer,
    "search": check_search,
    "lpips": check_lpips,
    "index": check_index,
    "training": check_training,
    "app": check_app,
}


# ------------------------------------------------------------------------------------------------------ report


def machine(device: torch.device) -> dict:
    import faiss

    info = {
        "date": time.strftime("%Y-%m-%d"),
        "device": str(device),
        "cpu": f"{platform.processor() or platform.machine()}, {os.cpu_count()} cores",
        "torch": torch.__version__,
        "faiss": f"{faiss.__version__} ({'GPU' if hasattr(faiss, 'StandardGpuResources') else 'CPU'} build)",
    }
    if device.type == "cuda":
        info["gpu"] = torch.cuda.get_device_name(device)
    return info


def markdown(report: dict) -> str:
    lines = [f"# gpu_check{' --smoke' if report['smoke'] else ''}", ""]
    lines += [", ".join(f"{k}: {v}" for k, v in report["machine"].items()), ""]
    for name, section in report["sections"].items():
        lines += [f"## {name}: {section['status']} ({section['seconds']:.1f} s)", ""]
        if section.get("error"):
            lines += ["```", section["error"], "```", ""]
        rows = section.get("rows", [])
        for keys in dict.fromkeys(tuple(row) for row in rows):  # one table per row shape
            same = [row for row in rows if tuple(row) == keys]
            lines += ["| " + " | ".join(keys) + " |", "|" + "---|" * len(keys)]
            lines += ["| " + " | ".join(str(rounded(row[k])) for k in keys) + " |" for row in same]
            lines.append("")
    lines.append(f"total: {report['seconds']:.1f} s")
    return "\n".join(lines) + "\n"


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--smoke", action="store_true", help="CPU, tiny sizes, the same code paths (seconds)")
    parser.add_argument("--out", type=Path, default=ROOT / "bench" / "results" / "gpu_check")
    parser.add_argument("--sections", nargs="+", choices=list(SECTIONS), default=list(SECTIONS))
    args = parser.parse_args(argv)
    from maskbit.device import pick_device

    device = torch.device("cpu") if args.smoke else pick_device()
    if args.smoke:  # tiny tensors gain nothing from a second thread, and lose much when another process holds a core
        torch.set_num_threads(1)
        os.environ["OMP_NUM_THREADS"] = "1"  # the app and the trainers
    if device.type != "cuda" and not args.smoke:
        print("warning: no CUDA device; running the full sizes on the CPU (use --smoke for a quick check)")
    started = time.time()
    report = {"smoke": args.smoke, "machine": machine(device), "sections": {}}
    with tempfile.TemporaryDirectory(prefix="gpu_check-") as work:
        check = Check(device, SMOKE if args.smoke else FULL, Path(work), args.smoke)
        for name in args.sections:
            if name == "training" and args.smoke and "app" in args.sections and (check.work / "index").is_dir():
                check.app = start_app(check)  # its start-up (imports, models) overlaps the trainers'
            start, cpu = time.time(), cpu_seconds()
            try:
                rows = SECTIONS[name](check)
                section = {"status": "ok", "rows": rounded(rows)}
            except Exception as error:
                section = {"status": "failed", "error": "".join(traceback.format_exception(error))[-3000:]}
            section["seconds"], section["cpu_seconds"] = time.time() - start, cpu_seconds() - cpu
            report["sections"][name] = section
            print(f"{name}: {section['status']} in {section['seconds']:.1f} s ({section['cpu_seconds']:.1f} s CPU)")
        if check.app is not None:  # started, but the app section did not run
            check.app.stop()
    report["seconds"] = time.time() - started
    args.out.mkdir(parents=True, exist_ok=True)
    (args.out / "gpu_check.json").write_text(json.dumps(report, indent=1) + "\n")
    (args.out / "gpu_check.md").write_text(markdown(report))
    print(f"wrote {args.out / 'gpu_check.json'} and gpu_check.md ({report['seconds']:.0f} s)")
    return 0 if all(s["status"] == "ok" for s in report["sections"].values()) else 1


if __name__ == "__main__":
    sys.exit(main())
