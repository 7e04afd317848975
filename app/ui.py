"""The Gradio interface: six tabs over app/explorer.py, every action also an API endpoint with a stable name.

API names (DESIGN.md): generate, flip_bits, neighbours, token_map, train_launch, train_status, train_stop; and
load_models, model_info, dataset_image, bit_walk, memorization_report, token_space, index_status, train_resume,
train_curves, train_load.
"""

from __future__ import annotations

import functools
import logging
import shutil
import tempfile
from pathlib import Path

import gradio as gr
import numpy as np
import plotly.graph_objects as go
import torch

from app import explorer
from app.explorer import OFFICIAL_PAIRS, UserError
from app.jobs import PRESETS, STAGES
from app.state import AppState
from app.validation import (
    ANNEALING,
    LIMITS,
    SCHEDULES,
    bounded_text,
    checked_seed,
    load_upload,
    public_message,
    sampling_from,
    whole_number,
)
from maskbit.config import SAMPLING_PRESETS

logger = logging.getLogger("app")

__all__ = ["build_ui", "CSS", "JS"]

CSS = """
.pixelated img, img.pixelated { image-rendering: pixelated; }
/* 32-64 px images: scale them up to the component instead of showing them at their size */
.pixelated .image-frame { width: 100% !important; }
.pixelated img { object-fit: contain !important; }
#token-grid img { image-rendering: pixelated; cursor: crosshair; }
"""
# gr.Plot has no click event: clicking a point of the token-space UMAP fills "view index id" with the point's id and
# presses "View", through plotly's own plotly_click. The handler is bound again whenever plotly rebuilds the plot.
JS = """
() => {
  const view = (event) => {
    const id = event.points.length ? event.points[0].customdata : undefined;
    const input = document.querySelector('#view-id input');
    if (id === undefined || !input) return;
    input.value = id;
    input.dispatchEvent(new Event('input', { bubbles: true }));
    setTimeout(() => document.querySelector('#view-button').click(), 50);
  };
  const bound = new WeakMap();  // plot element → the plot.on it was bound with (plotly makes a new one per plot)
  const bind = () => {
    const plot = document.querySelector('#umap-plot .js-plotly-plot');
    if (plot && plot.on && bound.get(plot) !== plot.on) {
      plot.on('plotly_click', view);
      bound.set(plot, plot.on);
    }
  };
  new MutationObserver(bind).observe(document.body, { childList: true, subtree: true });
}
"""
# Events that read an uploaded image skip Gradio's preprocessing: gr.Image would decode the upload first (seconds of
# CPU for a small PNG declaring 10000×10000 pixels, 16-bit images clipped to white, transparency dropped onto black,
# decoding errors that name the server's temporary path). The callbacks get Gradio's file payload ({"path": ...},
# already checked to be an upload) and app/validation.py:load_upload is the first reader of the file; their other
# inputs arrive unconverted too, and every one of them is checked by the callback.
UNREAD = {"preprocess": False}
JOB_COLUMNS = ["job", "stage", "state", "step", "loss", "pid", "error"]


try:  # Hugging Face ZeroGPU: a GPU is attached only inside functions decorated with spaces.GPU
    import spaces

    gpu = spaces.GPU
except ImportError:  # everywhere else

    def gpu(fn):
        return fn


def guarded(fn):
    """Expected failures become a message for the user; anything else is logged and reported without traceback."""

    @functools.wraps(fn)
    def wrapper(*args, **kwargs):
        try:
            return fn(*args, **kwargs)
        except gr.Error:
            raise
        except (UserError, ValueError, FileNotFoundError) as error:
            raise gr.Error(public_message(str(error)), print_exception=False) from None
        except torch.OutOfMemoryError:
            raise gr.Error("out of memory: ask for fewer images or steps", print_exception=False) from None
        except Exception as error:
            logger.exception("unexpected error in %s", fn.__name__)
            raise gr.Error(
                f"internal error ({type(error).__name__}); the request was not completed, the server log has details",
                print_exception=False,
            ) from None

    return wrapper


# ---------------------------------------------------------------------------------------------------- formatting


def to_numpy(image: torch.Tensor) -> np.ndarray:
    """(3, H, W) in [0, 1] → (H, W, 3) uint8."""
    return (image.detach().float().clamp(0, 1) * 255).round().to(torch.uint8).permute(1, 2, 0).cpu().numpy()


def upscale(array: np.ndarray, factor: int) -> np.ndarray:
    return array.repeat(factor, 0).repeat(factor, 1) if factor > 1 else array


def bar_chart(x, series: dict[str, np.ndarray], title: str, xaxis: str) -> go.Figure:
    figure = go.Figure()
    for name, values in series.items():
        figure.add_bar(x=list(x), y=[float(v) for v in values], name=name)
    figure.update_layout(title=title, xaxis_title=xaxis, barmode="group", height=320, margin=dict(t=40, b=40))
    return figure


def empty_figure(message: str) -> go.Figure:
    figure = go.Figure()
    figure.add_annotation(text=message, showarrow=False, x=0.5, y=0.5, xref="paper", yref="paper")
    figure.update_layout(height=260, xaxis_visible=False, yaxis_visible=False)
    return figure


# ---------------------------------------------------------------------------------------------------- the UI


def build_ui(state: AppState) -> gr.Blocks:
    settings = state.settings
    max_bytes = int(settings.max_upload_mb * 1e6)

    def image_input(path: str | None) -> torch.Tensor:
        models = state.models
        return load_upload(path, models.image_size, max_bytes, settings.max_upload_pixels)

    def save_png(image: torch.Tensor, name: str) -> str:
        """Generated images handed between tabs travel as PNG files in the app's bounded temporary folder."""
        path = state.files.path(f"{name}.png")
        from PIL import Image

        Image.fromarray(to_numpy(image)).save(path)
        return str(path)

    # ------------------------------------------------------------------------------------------------ models

    def model_choices() -> list[str]:
        choices = ["bundled default", *(OFFICIAL_PAIRS if settings.hub_allowed else [])]
        if state.jobs is not None:
            for name in state.jobs.names():
                if (state.jobs.run_dir(name).path / "model" / "config.json").is_file():
                    choices.append(f"run: {name}")
        return choices

    @guarded
    def model_info() -> dict:
        return state.models.describe() | {"lpips": state.lpips_note, "index": state.index_status.text()}

    @guarded
    def load_models(tokenizer: str, generator: str):
        models = state.switch_models(tokenizer, generator)
        return (
            model_info(),
            class_update(models),
            f"loaded {models.tokenizer_source} + {models.generator_source or 'no generator'}",
        )

    def choose_pair(choice: str):
        if choice == "bundled default":
            return "default", "default"
        if choice in OFFICIAL_PAIRS:
            return OFFICIAL_PAIRS[choice]
        if choice.startswith("run: ") and state.jobs is not None:
            return run_pair(choice.removeprefix("run: "))
        return gr.update(), gr.update()

    def run_pair(name: str) -> tuple[str, str]:
        stage, model, tokenizer = state.jobs.model(name)
        if stage == "generator":
            return tokenizer, str(model)
        return str(model), ""

    def class_update(models):
        names = models.class_names or ["(no generator)"]
        return gr.update(choices=names, value=[names[0]])

    # ------------------------------------------------------------------------------------------------ generate

    @gpu
    @guarded
    def generate(classes, count, seed, steps, guidance, annealing, scale_pow, randomize, temperature, schedule):
        models = state.models
        if isinstance(classes, str):
            classes = bounded_text(classes, "classes")
            classes = [c for c in classes.split(",") if c.strip()] if classes.strip() else []
        if not classes:
            raise UserError("choose at least one class")
        if not isinstance(classes, list) or len(classes) > max(len(models.class_names), 1):
            raise UserError(
                f"classes: choose at most {len(models.class_names)} (the model's classes); got {len(classes)}"
            )
        count = whole_number(count, "count (images)", 1, settings.max_images)
        seed = checked_seed(seed)
        ids = [models.class_id(c) for c in classes]
        labels = [ids[i % len(ids)] for i in range(count)]
        sampling = sampling_from(steps, guidance, annealing, scale_pow, randomize, temperature, schedule)
        result = explorer.generate(models, labels, sampling, seed)
        names = models.class_names
        gallery = [(to_numpy(image), f"{names[c]} (#{i})") for i, (image, c) in enumerate(zip(result.images, labels))]
        frames = [[to_numpy(torch.cat(list(frame), dim=2))] for frame in result.frames]  # each step: a strip
        figure = go.Figure(
            go.Scatter(
                x=list(range(1, len(result.masked_fraction) + 1)), y=result.masked_fraction, mode="lines+markers"
            )
        )
        figure.update_layout(
            title="masked fraction after each step",
            xaxis_title="step",
            yaxis_title="masked",
            height=280,
            yaxis_range=[0, 1],
        )
        files = [save_png(image, f"generated-{i}") for i, image in enumerate(result.images)]
        last = len(frames)
        return gallery, figure, frames, gr.update(maximum=last, value=last), frames[-1][0], files

    def show_frame(frames, step):
        if not frames:
            return None
        step = int(min(max(1, step), len(frames)))
        return frames[step - 1][0]

    def apply_preset(name):
        preset = SAMPLING_PRESETS[name]
        return [
            preset.num_steps,
            preset.guidance_scale,
            preset.guidance_annealing,
            preset.scale_pow,
            preset.randomize_temperature,
            preset.softmax_temperature,
            preset.mask_schedule,
        ]

    def pick_generated(files, evt: gr.SelectData):
        return files[evt.index] if files and evt.index is not None and evt.index < len(files) else None

    # ------------------------------------------------------------------------------------------------ bit flips

    def token_grid_image(image: torch.Tensor, selected: list[int] | None, grid: tuple[int, int]) -> np.ndarray:
        """The image upscaled with token borders; chosen tokens tinted."""
        h, w = grid
        factor = max(1, 256 // image.shape[-1])
        array = upscale(to_numpy(image), factor).astype(np.float32)
        cell_h, cell_w = array.shape[0] // h, array.shape[1] // w
        if selected:
            for p in selected:
                r, c = divmod(p, w)
                block = array[r * cell_h : (r + 1) * cell_h, c * cell_w : (c + 1) * cell_w]
                block[:] = 0.5 * block + 0.5 * np.array([255, 64, 64])
        array[::cell_h, :] = array[::cell_h, :] * 0.5 + 128 * 0.5
        array[:, ::cell_w] = array[:, ::cell_w] * 0.5 + 128 * 0.5
        return array.astype(np.uint8)

    @gpu
    @guarded
    def flip_bits(path, bit_text, token_text):
        models = state.models
        image = image_input(path)
        h, w = models.grid
        bit_ids = explorer.parse_ids(bit_text, models.tokenizer.num_bits, "bits")
        positions = explorer.parse_ids(token_text, h * w, "tokens")
        result = explorer.flip_each_bit(models, image, bit_ids, positions, state.lpips)
        captions = []
        for i, bit in enumerate(result.bit_ids):
            extra = f", LPIPS {result.lpips[i]:.3f}" if result.lpips is not None else ""
            captions.append(f"bit {bit}: PSNR {result.psnr[i]:.1f} dB, L2 {result.l2[i]:.2f}{extra}")
        gallery = [(to_numpy(img), cap) for img, cap in zip(result.flipped, captions)]
        series = {"PSNR (dB)": result.psnr}
        chart = bar_chart(
            result.bit_ids,
            series,
            f"flipping one bit at {result.positions} token(s): PSNR to the reconstruction",
            "bit",
        )
        second = {"L2": result.l2} | ({"LPIPS": result.lpips} if result.lpips is not None else {})
        chart2 = bar_chart(result.bit_ids, second, "distance to the reconstruction (higher = more change)", "bit")
        summary = {
            "bits": result.bit_ids,
            "tokens_flipped": result.positions,
            "psnr_db": [round(float(v), 3) for v in result.psnr],
            "l2": [round(float(v), 4) for v in result.l2],
            "lpips": None if result.lpips is None else [round(float(v), 5) for v in result.lpips],
            "lpips_note": state.lpips_note,
            "reconstruction_psnr_db": round(
                float(explorer.psnr(result.reconstruction[None], result.original[None])[0]), 3
            ),
        }
        grid_view = token_grid_image(result.reconstruction, positions, (h, w))
        return to_numpy(result.original), to_numpy(result.reconstruction), gallery, chart, chart2, summary, grid_view

    @guarded
    def toggle_token(path, token_text, evt: gr.SelectData):
        """A click on the token grid adds or removes that token from the chosen tokens."""
        models = state.models
        image = image_input(path)
        h, w = models.grid
        x, y = evt.index
        factor = max(1, 256 // image.shape[-1])
        cell = image.shape[-1] * factor // w
        position = int(y // cell) * w + int(x // cell)
        current = explorer.parse_ids(token_text, h * w, "tokens") or []
        chosen = sorted(set(current) ^ {position})
        reconstruction = models.tokenizer.decode(models.tokenizer.encode(image[None].to(models.device))).clamp(0, 1)[0]
        text = ", ".join(map(str, chosen)) if chosen else "all"
        return text, token_grid_image(reconstruction.cpu(), chosen, (h, w))

    @gpu
    @guarded
    def token_map(path):
        models = state.models
        image = image_input(path).to(models.device)
        tokens = models.tokenizer.encode(image[None])[0].cpu()
        planes = explorer.bit_planes(tokens, models.tokenizer.num_bits)
        factor = max(1, 96 // tokens.shape[-1])
        gallery = [
            (upscale((plane.numpy() * 255).astype(np.uint8)[..., None].repeat(3, 2), factor), f"bit {k}")
            for k, plane in enumerate(planes)
        ]
        heat = go.Figure(go.Heatmap(z=tokens.tolist(), colorscale="Viridis", colorbar_title="index"))
        heat.update_layout(title="token indices", yaxis_autorange="reversed", height=320, margin=dict(t=40, b=20))
        return gallery, heat, tokens.tolist()

    @gpu
    @guarded
    def bit_walk(path, r, steps, seed):
        models = state.models
        image = image_input(path)
        r = whole_number(r, "r (bits flipped per step)", 1, LIMITS.walk_r)
        steps = whole_number(steps, "steps", 1, LIMITS.walk_steps)
        walk = explorer.bit_walk(models, image, r, steps, checked_seed(seed), state.lpips)
        gallery = [
            (to_numpy(img), f"{d} bits flipped: PSNR {p:.1f} dB")
            for img, d, p in zip(walk.images, walk.hamming, walk.psnr)
        ]
        figure = go.Figure(
            go.Scatter(x=walk.hamming, y=[float(v) for v in walk.psnr], mode="lines+markers", name="PSNR")
        )
        if walk.lpips is not None:
            figure.add_scatter(
                x=walk.hamming, y=[float(v) for v in walk.lpips], mode="lines+markers", name="LPIPS", yaxis="y2"
            )
            figure.update_layout(yaxis2=dict(overlaying="y", side="right", title="LPIPS"))
        figure.update_layout(
            title="random walk in Hamming space", xaxis_title="bits flipped", yaxis_title="PSNR (dB)", height=320
        )
        return gallery, figure

    # ------------------------------------------------------------------------------------------------ dataset images

    @guarded
    def dataset_image(number):
        if not settings.dataset_images_visible:
            raise UserError("training-set images are not shown on this server (the deployer can turn them on)")
        from data import eval_view

        models = state.models
        index = state.index
        spec = (
            index.manifest.get("dataset", {}).get("spec", settings.index_dataset) if index else settings.index_dataset
        )
        view = eval_view(spec, "train", 0, models.image_size)
        classes = view.classes
        number = whole_number(number, "number (dataset image number)", 0, len(view) - 1)
        image, label = view[number]
        return save_png(image, f"dataset-{number}"), f"{spec} train #{number}: {classes[label] if classes else label}"

    # ------------------------------------------------------------------------------------------------ neighbours

    def thumbnail(index, i: int) -> np.ndarray:
        return index.thumbnails[i] if settings.dataset_images_visible else np.full_like(index.thumbnails[i], 160)

    @gpu
    @guarded
    def neighbours(path, k):
        index = state.require_index()
        image = image_input(path)
        k = whole_number(k, "k", 1, LIMITS.k)
        result = explorer.neighbours(index, image, k)
        classes = index.manifest.get("dataset", {}).get("classes", [])
        galleries = {}
        for metric in ("hamming", "lpips", "pixel"):
            found = result.found.get(metric)
            if found is None:
                galleries[metric] = []
                continue
            galleries[metric] = [
                (thumbnail(index, int(i)), f"{classes[label] if 0 <= label < len(classes) else label} · {d:.4g}")
                for i, d, label in zip(found.ids[0], found.distances[0], found.labels[0])
            ]
        shortlist = result.shortlist
        other = "lpips" if "lpips" in shortlist else "pixel"
        scatter = go.Figure(
            go.Scatter(
                x=shortlist["hamming"].tolist(),
                y=shortlist[other].tolist(),
                mode="markers",
                text=[index.sources[int(i)]["source"] for i in shortlist["ids"]],
            )
        )
        scatter.update_layout(
            title=f"Hamming vs {other} over the shortlist ({len(shortlist['ids'])} images)",
            xaxis_title="Hamming distance (bits)",
            yaxis_title=other,
            height=340,
        )
        heat = go.Figure(
            go.Heatmap(
                z=result.heatmap.tolist(),
                colorscale="Magma",
                zmin=0,
                zmax=index.tokenizer.num_bits,
                colorbar_title="bits",
            )
        )
        heat.update_layout(
            title="per-token Hamming distance to the nearest neighbour", yaxis_autorange="reversed", height=340
        )
        lines = []
        for metric, verdict in result.verdicts.items():
            if verdict["threshold"] is None:
                lines.append(f"- **{metric}**: nearest {verdict['nearest_distance']:.4g} (no calibrated threshold)")
                continue
            flag = (
                "⚠️ closer than held-out real images: possible memorization"
                if verdict["memorized"]
                else "✅ not memorized"
            )
            lines.append(
                f"- **{metric}**: nearest {verdict['nearest_distance']:.4g}, "
                f"threshold {verdict['threshold']:.4g} → {flag}"
            )
        overlap = ", ".join(f"{pair}: {value:.0%}" for pair, value in result.overlap.items())
        text = "\n".join(lines) + f"\n\ntop-{k} overlap: {overlap}"
        if "lpips" not in result.found:
            text += f"\n\n{state.lpips_note}"
        data = {
            metric: [
                {"id": int(i), "distance": float(d), "source": s, "label": int(lab)}
                for i, d, s, lab in zip(f.ids[0], f.distances[0], f.sources[0], f.labels[0])
            ]
            for metric, f in result.found.items()
        } | {"overlap": result.overlap, "verdicts": result.verdicts}
        return galleries["hamming"], galleries["lpips"], galleries["pixel"], text, scatter, heat, data

    @gpu
    @guarded
    def memorization_report(count, seed):
        index = state.require_index()
        models = state.models
        if not models.can_generate:
            raise UserError(models.problem or "load a generator to report on its images")
        count = whole_number(count, "count (generated images)", *LIMITS.report_images)
        seed = checked_seed(seed)
        from data import heldout_images
        from indexes.report import memorization_report as report

        labels = [i % len(models.class_names) for i in range(count)]
        generated = torch.cat(
            [
                explorer.generate(models, labels[i : i + 16], models.sampling, seed + i, frames=False).images
                for i in range(0, count, 16)
            ]
        )
        spec = index.manifest.get("dataset", {}).get("spec", settings.index_dataset)
        heldout = heldout_images(spec, count, index.manifest["image_size"])
        with tempfile.TemporaryDirectory(prefix="maskbit-report-") as out:  # the figure is kept, the rest removed
            data = report(index, generated.cpu(), heldout, Path(out))
            figure = shutil.copyfile(Path(out) / "report.png", state.files.path("report.png"))
        lines = [
            f"- **{m}**: threshold {d['threshold']:.4g} (p{data['percentile']:g} of held-out), "
            f"{d['flagged_fraction']:.1%} of {count} generated images flagged; median nearest distance "
            f"generated {d['generated']['median']:.4g} vs held-out {d['heldout']['median']:.4g}"
            for m, d in data["metrics"].items()
        ]
        summary = {
            m: {k: d[k] for k in ("threshold", "flagged_fraction", "generated", "heldout")}
            for m, d in data["metrics"].items()
        }
        return str(figure), "\n".join(lines), summary

    # ------------------------------------------------------------------------------------------------ token space

    @guarded
    def token_space():
        index = state.require_index()
        stats = explorer.token_statistics(index.tokens, index.tokenizer.num_bits)
        k = range(stats.num_bits)
        usage = bar_chart(k, {"P(bit = +1)": stats.bit_usage}, f"per-bit usage over {stats.images} images", "bit")
        usage.add_bar(x=list(k), y=[float(v) for v in stats.bit_entropy], name="entropy (bits)")
        codes = go.Figure(go.Scatter(y=stats.code_counts.tolist(), mode="lines"))
        codes.update_layout(
            title=f"code usage: {stats.codes_used} of {2**stats.num_bits} codes used, "
            f"perplexity {stats.perplexity:.0f}",
            xaxis_title="code rank",
            yaxis_title="count",
            yaxis_type="log",
            height=320,
        )
        projection = state.projection
        if projection is None:
            umap = empty_figure("the UMAP is being computed in the background; refresh in a moment")
        else:
            classes = index.manifest.get("dataset", {}).get("classes", [])
            labels = [s["label"] for s in index.sources[: len(projection)]]
            umap = go.Figure()
            for label in sorted(set(labels)):
                members = [i for i, lab in enumerate(labels) if lab == label]
                name = classes[label] if 0 <= label < len(classes) else str(label)
                umap.add_scattergl(
                    x=projection[members, 0].tolist(),
                    y=projection[members, 1].tolist(),
                    mode="markers",
                    name=name,
                    marker=dict(size=4),
                    customdata=members,
                    hovertemplate=f"{name} · id %{{customdata}}<extra></extra>",
                )
            umap.update_layout(title="UMAP of the images' bit tokens (click a point to view its image)", height=520)
        data = {
            "images": stats.images,
            "codes_used": stats.codes_used,
            "code_entropy_bits": stats.code_entropy,
            "perplexity": stats.perplexity,
            "bit_usage": stats.bit_usage.round(4).tolist(),
            "bit_entropy": stats.bit_entropy.round(4).tolist(),
        }
        return usage, codes, umap, data

    @guarded
    def indexed_image(number):
        index = state.require_index()
        number = whole_number(number, "number (index id)", 0, len(index) - 1)
        if not settings.dataset_images_visible:
            raise UserError("training-set images are not shown on this server")
        classes = index.manifest.get("dataset", {}).get("classes", [])
        label = index.sources[number]["label"]
        return index.thumbnails[
            number
        ], f"id {number}: {index.sources[number]['source']} ({classes[label] if 0 <= label < len(classes) else label})"

    # ------------------------------------------------------------------------------------------------ training

    def jobs():
        if state.jobs is None:
            raise UserError("training is disabled on this server (exposed without --enable-training and --auth)")
        return state.jobs

    @guarded
    def train_status():
        table = jobs().table()
        return table, gr.update(choices=[row[0] for row in table])

    @guarded
    def train_launch(stage, name, preset, dataset, overrides):
        name = bounded_text(name, "name (job name)", 200).strip()
        jobs().launch(stage, name, preset, dataset, overrides or "")
        table = jobs().table()
        return table, gr.update(choices=[row[0] for row in table], value=name), f"launched {name}"

    @guarded
    def train_stop(name):
        jobs().stop(name)
        return train_status()[0], f"asked {name} to stop (it writes a checkpoint first)"

    @guarded
    def train_resume(name):
        jobs().resume(name)
        return train_status()[0], f"resuming {name}"

    @guarded
    def train_curves(name):
        if not name:
            return empty_figure("choose a job"), None, ""
        manager = jobs()
        metrics = manager.metrics(name)
        figure = go.Figure()
        keys = sorted({k for m in metrics for k in m if k.endswith("loss") or k == "eval_psnr"})
        for key in keys:
            points = [(m["step"], m[key]) for m in metrics if key in m]
            figure.add_scatter(
                x=[p[0] for p in points],
                y=[p[1] for p in points],
                mode="lines",
                name=key,
                yaxis="y2" if key == "eval_psnr" else "y",
            )
        figure.update_layout(
            title=f"{name}: losses",
            xaxis_title="step",
            height=360,
            yaxis2=dict(overlaying="y", side="right", title="PSNR (dB)"),
        )
        sample = manager.latest_sample(name)
        return figure, str(sample) if sample else None, manager.console_tail(name, 8)

    @guarded
    def train_load(name):
        tokenizer, generator = run_pair(name)
        if not generator:  # a tokenizer alone: keep no generator (the current one was trained on other tokens)
            generator = ""
        return load_models(tokenizer, generator)

    # ------------------------------------------------------------------------------------------------ layout

    models = state.models
    # Numbers have no precision: Gradio would turn NaN into an error that names no parameter; the callbacks check
    # whole numbers themselves. Every 10 minutes Gradio deletes the files of its own cache (uploads, copies of
    # returned files) that are older than an hour; the app's own files are bounded by state.files.
    with gr.Blocks(title="MaskBit Explorer", delete_cache=(600, 3600)) as demo:
        gr.Markdown(
            "# MaskBit Explorer\nBit-token image generation (Weber et al., TMLR 2024): generate, flip bits, find "
            "training-set neighbours, look at the token space, train."
        )
        with gr.Accordion("Model", open=False):
            with gr.Row():
                pair = gr.Dropdown(
                    model_choices(), label="model pair", value="bundled default", allow_custom_value=False
                )
                tokenizer_box = gr.Textbox(models.tokenizer_source, label="tokenizer (from_pretrained source)")
                generator_box = gr.Textbox(models.generator_source, label="generator (empty: none)")
                load_button = gr.Button("Load", variant="primary")
            load_message = gr.Markdown()
            info = gr.JSON(label="loaded")
        index_line = gr.Markdown(state.index_status.text())
        timer = gr.Timer(2.0)

        with gr.Tabs() as tabs:
            # ---------------------------------------------------------------- generate
            with gr.Tab("Generate", id="generate"):
                with gr.Row():
                    with gr.Column(scale=1):
                        classes = gr.Dropdown(
                            models.class_names or ["(no generator)"],
                            value=[(models.class_names or ["(no generator)"])[0]],
                            multiselect=True,
                            allow_custom_value=True,
                            label="classes (cycled over the images)",
                        )
                        count = gr.Slider(1, settings.max_images, value=4, step=1, label="images")
                        seed = gr.Number(0, label="seed")
                        preset = gr.Dropdown(
                            list(SAMPLING_PRESETS), value=None, label="sampling preset (fills the knobs)"
                        )
                        s = models.sampling
                        steps = gr.Slider(1, LIMITS.steps, value=s.num_steps, step=1, label="steps")
                        guidance = gr.Slider(0, 15, value=s.guidance_scale, step=0.1, label="guidance scale")
                        annealing = gr.Radio(ANNEALING, value=s.guidance_annealing, label="guidance annealing")
                        scale_pow = gr.Slider(0, 5, value=s.scale_pow, step=0.1, label="scale power")
                        randomize = gr.Slider(
                            0, 15, value=s.randomize_temperature, step=0.1, label="randomize temperature"
                        )
                        temperature = gr.Slider(
                            0.1, 5, value=s.softmax_temperature, step=0.1, label="softmax temperature"
                        )
                        schedule = gr.Radio(SCHEDULES, value=s.mask_schedule, label="mask schedule")
                        generate_button = gr.Button("Generate", variant="primary")
                    with gr.Column(scale=2):
                        gallery = gr.Gallery(
                            elem_id="generated-gallery",
                            label="generated (select one, then send it)",
                            columns=4,
                            format="png",
                            elem_classes="pixelated",
                            height=340,
                        )
                        with gr.Row():
                            to_flip = gr.Button("Send to bit flips")
                            to_neighbours = gr.Button("Send to neighbours")
                        frame = gr.Image(
                            label="unmasking: the guess at each step (grey = still masked)",
                            format="png",
                            elem_classes="pixelated",
                            interactive=False,
                        )
                        step_slider = gr.Slider(1, s.num_steps, value=s.num_steps, step=1, label="step")
                        masked_plot = gr.Plot(label="masked fraction")
                frames_state = gr.State([])
                files_state = gr.State([])
                chosen_state = gr.State(None)

            # ---------------------------------------------------------------- bit flips
            with gr.Tab("Bit flips", id="flip"):
                with gr.Row():
                    with gr.Column(scale=1):
                        flip_image = gr.Image(
                            type="filepath",
                            image_mode=None,  # events that read it skip Gradio's preprocessing (UNREAD) anyway
                            label="image (upload, dataset or generated)",
                            sources=["upload", "clipboard"],
                            elem_classes="pixelated",
                            height=260,
                        )
                        with gr.Row():
                            dataset_number = gr.Number(
                                0, label="dataset image #", visible=settings.dataset_images_visible
                            )
                            dataset_button = gr.Button("Use dataset image", visible=settings.dataset_images_visible)
                        dataset_caption = gr.Markdown()
                        bit_text = gr.Textbox("all", label="bits to flip (all, or e.g. 0, 3, 5-7)")
                        token_text = gr.Textbox("all", label="at tokens (all, or ids; click the grid)")
                        flip_button = gr.Button("Flip each bit", variant="primary")
                        token_grid = gr.Image(
                            label="token grid: click tokens to choose them",
                            interactive=False,
                            elem_id="token-grid",
                            format="png",
                        )
                    with gr.Column(scale=2):
                        with gr.Row():
                            original = gr.Image(
                                label="original", format="png", elem_classes="pixelated", interactive=False, height=200
                            )
                            reconstruction = gr.Image(
                                label="reconstruction",
                                format="png",
                                elem_classes="pixelated",
                                interactive=False,
                                height=200,
                            )
                        flipped = gr.Gallery(
                            elem_id="flipped-gallery",
                            label="bit i flipped",
                            columns=6,
                            format="png",
                            elem_classes="pixelated",
                            height=300,
                        )
                        flip_chart = gr.Plot(elem_id="flip-chart")
                        flip_chart2 = gr.Plot()
                        flip_json = gr.JSON(label="distances", open=False)
                with gr.Accordion("Bit planes and token map", open=False):
                    planes_button = gr.Button("Show bit planes")
                    with gr.Row():
                        planes = gr.Gallery(
                            label="bit planes (white = +1)",
                            columns=6,
                            format="png",
                            elem_classes="pixelated",
                            height=260,
                        )
                        token_heat = gr.Plot()
                    token_json = gr.JSON(visible=False)
                with gr.Accordion("Random walk in Hamming space", open=False):
                    with gr.Row():
                        walk_r = gr.Slider(1, LIMITS.walk_r, value=8, step=1, label="r: bits flipped per step")
                        walk_steps = gr.Slider(1, LIMITS.walk_steps, value=8, step=1, label="steps")
                        walk_seed = gr.Number(0, label="seed")
                        walk_button = gr.Button("Walk")
                    walk_gallery = gr.Gallery(columns=9, format="png", elem_classes="pixelated", height=200)
                    walk_plot = gr.Plot()

            # ---------------------------------------------------------------- neighbours
            with gr.Tab("Neighbours", id="neighbours"):
                with gr.Row():
                    with gr.Column(scale=1):
                        query = gr.Image(
                            type="filepath", image_mode=None, label="query image", elem_classes="pixelated", height=240
                        )
                        k = gr.Slider(1, LIMITS.k, value=8, step=1, label="k")
                        neighbours_button = gr.Button("Find neighbours", variant="primary")
                        verdict = gr.Markdown(elem_id="verdict")
                    with gr.Column(scale=2):
                        hamming_gallery = gr.Gallery(
                            elem_id="hamming-gallery",
                            label="by Hamming distance of the bit tokens",
                            columns=8,
                            format="png",
                            elem_classes="pixelated",
                            height=150,
                        )
                        lpips_gallery = gr.Gallery(
                            label="by LPIPS", columns=8, format="png", elem_classes="pixelated", height=150
                        )
                        pixel_gallery = gr.Gallery(
                            label="by pixel L2 (16×16)", columns=8, format="png", elem_classes="pixelated", height=150
                        )
                with gr.Row():
                    scatter = gr.Plot()
                    heatmap = gr.Plot()
                neighbours_json = gr.JSON(label="neighbours", open=False)
                with gr.Accordion("Memorization report over generated images", open=False):
                    with gr.Row():
                        report_count = gr.Slider(*LIMITS.report_images, value=32, step=4, label="generated images")
                        report_seed = gr.Number(0, label="seed")
                        report_button = gr.Button("Run report")
                    report_text = gr.Markdown()
                    report_image = gr.Image(label="nearest-distance histograms", format="png", interactive=False)
                    report_json = gr.JSON(visible=False)

            # ---------------------------------------------------------------- token space
            with gr.Tab("Token space", id="tokens"):
                token_space_button = gr.Button("Compute", variant="primary")
                with gr.Row():
                    usage_plot = gr.Plot()
                    codes_plot = gr.Plot()
                umap_plot = gr.Plot(elem_id="umap-plot")
                with gr.Row():
                    view_id = gr.Number(0, label="view index id", elem_id="view-id")
                    view_button = gr.Button("View", elem_id="view-button")
                    view_image = gr.Image(
                        format="png", elem_classes="pixelated", interactive=False, height=160, label="indexed image"
                    )
                    view_caption = gr.Markdown(elem_id="view-caption")
                space_json = gr.JSON(label="statistics", open=False)

            # ---------------------------------------------------------------- training
            with gr.Tab("Training", id="training"):
                if state.jobs is None:
                    gr.Markdown(
                        "Training is disabled on this server: it is exposed and was not started with "
                        "`--enable-training --auth user:password`."
                    )
                with gr.Row():
                    stage = gr.Radio(list(STAGES), value="tokenizer", label="stage")
                    job_name = gr.Textbox("tokenizer-1", label="job name")
                    train_preset = gr.Dropdown(PRESETS["tokenizer"], value="tiny", label="preset")
                    train_dataset = gr.Textbox(
                        "procedural", label="dataset (procedural, or a folder in the workspace/data roots)"
                    )
                overrides = gr.Textbox(
                    "", lines=3, label="overrides, one key=value per line (e.g. training.max_steps=200)"
                )
                with gr.Row():
                    launch_button = gr.Button("Launch", variant="primary", interactive=state.jobs is not None)
                    job_choice = gr.Dropdown([], label="job", allow_custom_value=True)
                    stop_button = gr.Button("Stop", interactive=state.jobs is not None)
                    resume_button = gr.Button("Resume", interactive=state.jobs is not None)
                    load_run_button = gr.Button("Load into explorer", interactive=state.jobs is not None)
                train_message = gr.Markdown()
                job_table = gr.Dataframe(
                    elem_id="job-table",
                    headers=JOB_COLUMNS,
                    datatype=["str"] * len(JOB_COLUMNS),
                    label="jobs",
                    interactive=False,
                )
                with gr.Row():
                    curves = gr.Plot()
                    sample_image = gr.Image(label="latest samples", interactive=False)
                console = gr.Textbox(label="console (last lines)", lines=8, interactive=False)

        # ---------------------------------------------------------------- events
        sampling_knobs = [steps, guidance, annealing, scale_pow, randomize, temperature, schedule]
        demo.load(model_info, None, info, api_name="model_info")
        timer.tick(
            lambda: state.index_status.text(), None, index_line, api_visibility="private", show_progress="hidden"
        )
        pair.change(choose_pair, pair, [tokenizer_box, generator_box], api_visibility="private")
        load_button.click(
            load_models, [tokenizer_box, generator_box], [info, classes, load_message], api_name="load_models"
        )
        gr.Button("Index status", visible=False).click(
            lambda: state.index_status.text(), None, index_line, api_name="index_status"
        )

        preset.change(apply_preset, preset, sampling_knobs, api_visibility="private")
        generate_button.click(
            generate,
            [classes, count, seed, *sampling_knobs],
            [gallery, masked_plot, frames_state, step_slider, frame, files_state],
            api_name="generate",
        )
        step_slider.change(
            show_frame, [frames_state, step_slider], frame, api_visibility="private", show_progress="hidden"
        )
        gallery.select(pick_generated, files_state, chosen_state, api_visibility="private")

        def send(files, chosen):
            path = chosen or (files[0] if files else None)
            if path is None:
                raise gr.Error("generate an image first")
            if not Path(path).is_file():  # the app keeps its newest files only (state.files)
                raise gr.Error("this generated image is no longer kept on the server; generate again")
            return path

        to_flip.click(send, [files_state, chosen_state], flip_image, api_visibility="private").then(
            lambda: gr.Tabs(selected="flip"), None, tabs, api_visibility="private"
        )
        to_neighbours.click(send, [files_state, chosen_state], query, api_visibility="private").then(
            lambda: gr.Tabs(selected="neighbours"), None, tabs, api_visibility="private"
        )

        dataset_button.click(dataset_image, dataset_number, [flip_image, dataset_caption], api_name="dataset_image")
        flip_button.click(
            flip_bits,
            [flip_image, bit_text, token_text],
            [original, reconstruction, flipped, flip_chart, flip_chart2, flip_json, token_grid],
            api_name="flip_bits",
            **UNREAD,
        )
        token_grid.select(
            toggle_token, [flip_image, token_text], [token_text, token_grid], api_visibility="private", **UNREAD
        )
        planes_button.click(token_map, flip_image, [planes, token_heat, token_json], api_name="token_map", **UNREAD)
        walk_button.click(
            bit_walk,
            [flip_image, walk_r, walk_steps, walk_seed],
            [walk_gallery, walk_plot],
            api_name="bit_walk",
            **UNREAD,
        )

        neighbours_button.click(
            neighbours,
            [query, k],
            [hamming_gallery, lpips_gallery, pixel_gallery, verdict, scatter, heatmap, neighbours_json],
            api_name="neighbours",
            **UNREAD,
        )
        report_button.click(
            memorization_report,
            [report_count, report_seed],
            [report_image, report_text, report_json],
            api_name="memorization_report",
        )

        token_space_button.click(
            token_space, None, [usage_plot, codes_plot, umap_plot, space_json], api_name="token_space"
        )
        view_button.click(indexed_image, view_id, [view_image, view_caption], api_name="indexed_image")

        stage.change(
            lambda s: gr.update(choices=PRESETS[s], value="tiny"), stage, train_preset, api_visibility="private"
        )
        launch_button.click(
            train_launch,
            [stage, job_name, train_preset, train_dataset, overrides],
            [job_table, job_choice, train_message],
            api_name="train_launch",
        )
        gr.Button("status", visible=False).click(train_status, None, [job_table, job_choice], api_name="train_status")
        stop_button.click(train_stop, job_choice, [job_table, train_message], api_name="train_stop")
        resume_button.click(train_resume, job_choice, [job_table, train_message], api_name="train_resume")
        load_run_button.click(train_load, job_choice, [info, classes, load_message], api_name="train_load")
        job_choice.change(train_curves, job_choice, [curves, sample_image, console], api_name="train_curves")
        if state.jobs is not None:

            def refresh_jobs(name):
                table = state.jobs.table()
                figure, sample, tail = train_curves(name) if name else (gr.update(), gr.update(), gr.update())
                return table, figure, sample, tail

            timer.tick(
                refresh_jobs,
                job_choice,
                [job_table, curves, sample_image, console],
                api_visibility="private",
                show_progress="hidden",
            )
            demo.load(train_status, None, [job_table, job_choice], api_visibility="private")
    return demo
