"""The page: widgets in five tabs, each event wired to an endpoint of Callbacks (`c.explore.generate`, `c.served`)
under its stable `api_name`.

Nothing here computes or imports torch: the values the widgets start from come from `Callbacks.page_values()`.
Events that read an uploaded image skip Gradio's preprocessing (`UNREAD`): gr.Image would decode the upload first
(seconds of CPU for a small PNG declaring 10000×10000 pixels, 16-bit images clipped to white, transparency dropped
onto black, decoding errors that name the server's temporary path). Their callbacks get Gradio's file payload and
app/validation.py:load_upload is the first reader of the file; their other inputs arrive unconverted and are checked.
"""

from __future__ import annotations

import functools
import inspect
from types import SimpleNamespace
from typing import TYPE_CHECKING

import gradio as gr

from app import texts
from app.memory import trimmed

if TYPE_CHECKING:
    from app.callbacks import Callbacks

__all__ = ["build"]

UNREAD = {"preprocess": False}
PRIVATE = {"api_visibility": "private"}
# The actions that compute with the models or the index share one concurrency limit (`--concurrency`, the queue's
# default): without it each event had its own, and 32 clients mixing four actions computed 8 requests at once on 2
# cores. Other queued events (job controls, dataset images) keep their own limits. Each computing request ends with
# a trim of the native heap (app/memory.py).
COMPUTE = {"concurrency_id": "compute"}
# Light events (the page's own load events and 2-s timer, status, presets, the step slider) skip the queue: the queue's
# bound (`--max-queue`) counts every waiting event, so a page opened while computing requests fill it had its load
# events and ticks refused (an "Error" badge on every sampling knob, a toast each). The page sends these straight to
# the server; an API client (gradio_client) still joins the queue for them.
LIGHT = {"queue": False}
PIXELATED = {"format": "png", "elem_classes": "pixelated"}


def build(callbacks: Callbacks) -> gr.Blocks:
    v = callbacks.page_values()
    # Numbers have no precision: Gradio would turn NaN into an error that names no parameter; the callbacks check
    # whole numbers themselves. Every 10 minutes Gradio deletes the files of its own cache (uploads, copies of
    # returned files) that are older than an hour; the app's own files are bounded by state.files.
    with gr.Blocks(title="MaskBit Explorer", delete_cache=(600, 3600)) as demo:
        gr.Markdown(
            "# MaskBit Explorer\nBit-token image generation (Weber et al., TMLR 2024): generate, flip bits, find "
            "training-set neighbours, look at the token space, train."
        )
        m = _model_panel(v)
        index_line = gr.Markdown(v["index_status"])
        timer = gr.Timer(2.0)
        with gr.Tabs(overflow_behavior="wrap") as tabs:  # a narrow window wraps the tabs, none hidden
            g = _generate_tab(v)
            f = _flips_tab(v)
            n = _neighbours_tab(v)
            t = _tokens_tab()
            j = _training_tab(v)
        _wire(demo, callbacks, v, m, g, f, n, t, j, tabs, timer, index_line)
    return demo


# ---------------------------------------------------------------------------------------------------- widgets


def _intro(text: str) -> None:
    gr.Markdown(text, elem_classes="intro")


def _model_panel(v: dict) -> SimpleNamespace:
    with gr.Accordion("Model", open=False):
        with gr.Row():
            pair = gr.Dropdown(v["model_choices"], value=v["model_choice"], label="model pair")
            tokenizer = gr.Textbox(v["tokenizer"], label="tokenizer (from_pretrained source)")
            generator = gr.Textbox(v["generator"], label="generator (empty: none)")
            load = gr.Button("Load", variant="primary")
        message = gr.Markdown(elem_id="model-message")
        info = gr.JSON(label="loaded")
    return SimpleNamespace(pair=pair, tokenizer=tokenizer, generator=generator, load=load, message=message, info=info)


def _generate_tab(v: dict) -> SimpleNamespace:
    s, limits, ranges = v["sampling"], v["limits"], v["limits"]["knobs"]
    with gr.Tab("Generate", id="generate"):
        _intro(texts.GENERATE)
        with gr.Row():
            with gr.Column(scale=1):
                names = v["class_names"]
                labels = gr.Dropdown(
                    names, value=names[:1], multiselect=True, allow_custom_value=True, label="classes (cycled)"
                )
                count = gr.Slider(1, limits["max_images"], value=4, step=1, label="images")
                seed = gr.Number(0, label="seed")
                preset = gr.Dropdown(v["sampling_presets"], value=None, label="sampling preset (fills the knobs)")
                preset_note = gr.Markdown(elem_id="preset-note")
                widgets = {  # by the knob's name; the page lists them in the generate endpoint's order
                    "num_steps": lambda: gr.Slider(
                        *ranges["num_steps"], value=s["num_steps"], step=1, label="steps", elem_id="num-steps"
                    ),
                    "guidance_scale": lambda: gr.Slider(
                        *ranges["guidance_scale"], value=s["guidance_scale"], step=0.1, label="guidance scale"
                    ),
                    "guidance_annealing": lambda: gr.Radio(
                        v["guidance_annealings"],
                        value=s["guidance_annealing"],
                        label="guidance annealing",
                        elem_id="guidance-annealing",
                    ),
                    "scale_pow": lambda: gr.Slider(
                        *ranges["scale_pow"], value=s["scale_pow"], step=0.01, label="scale power"
                    ),
                    "randomize_temperature": lambda: gr.Slider(
                        *ranges["randomize_temperature"],
                        value=s["randomize_temperature"],
                        step=0.1,
                        label="randomize temperature",
                    ),
                    "softmax_temperature": lambda: gr.Slider(
                        *ranges["softmax_temperature"],
                        value=s["softmax_temperature"],
                        step=0.01,
                        label="softmax temperature",
                    ),
                    "mask_schedule": lambda: gr.Radio(
                        v["mask_schedules"], value=s["mask_schedule"], label="mask schedule"
                    ),
                }
                knobs = [widgets[name]() for name in v["sampling_knobs"]]
                button = gr.Button("Generate", variant="primary", interactive=v["can_generate"])
                note = gr.Markdown(v["generation_note"], elem_id="generation-note")
                message = gr.Markdown(elem_id="generate-message")
            with gr.Column(scale=2):
                gallery = gr.Gallery(
                    elem_id="generated-gallery",
                    label="generated (select one, then send it)",
                    columns=4,
                    height="max-content",
                    **PIXELATED,
                )
                with gr.Row():
                    to_flip = gr.Button("Send to bit flips")
                    to_neighbours = gr.Button("Send to neighbours")
                progress = gr.Markdown(elem_id="generate-progress")
                frame = gr.Image(
                    label="unmasking: the images at the step chosen below (grey: still masked)",
                    interactive=False,
                    elem_id="unmasking",
                    **PIXELATED,
                )
                step = gr.Slider(1, s["num_steps"], value=s["num_steps"], step=1, label="step")
                masked = gr.Plot(label="masked fraction", elem_id="masked-plot")
        unmasking, files, chosen = gr.State(None), gr.State([]), gr.State(None)  # inside the tab, as every child
    return SimpleNamespace(
        labels=labels,
        count=count,
        seed=seed,
        preset=preset,
        preset_note=preset_note,
        knobs=knobs,
        button=button,
        note=note,
        message=message,
        gallery=gallery,
        to_flip=to_flip,
        to_neighbours=to_neighbours,
        progress=progress,
        frame=frame,
        step=step,
        masked=masked,
        unmasking=unmasking,
        files=files,
        chosen=chosen,
    )


def _flips_tab(v: dict) -> SimpleNamespace:
    limits = v["limits"]
    with gr.Tab("Bit flips", id="flip"):
        _intro(texts.FLIPS)
        with gr.Row():
            with gr.Column(scale=1):
                image = gr.Image(
                    type="filepath",
                    image_mode=None,
                    label="image (upload, dataset or generated)",
                    elem_id="flip-image",
                    sources=["upload", "clipboard"],
                    elem_classes="pixelated",
                    height=260,
                )
                with gr.Row(visible=v["dataset_images_visible"]):
                    item = gr.Number(0, label="dataset image #")
                    use_item = gr.Button("Use dataset image")
                caption = gr.Markdown(elem_id="flip-caption")
                to_neighbours = gr.Button("Send to neighbours", size="sm", elem_id="flip-send")
                bit_ids = gr.Textbox("all", label="bits to flip (all, or e.g. 0, 3, 5-7)")
                positions = gr.Textbox("all", label="at tokens (all, or ids; click the grid)")
                button = gr.Button("Flip each bit", variant="primary")
                message = gr.Markdown(elem_id="flip-message")
                grid = gr.Image(
                    label="token grid: click tokens to choose them",
                    interactive=False,
                    elem_id="token-grid",
                    format="png",
                )
            with gr.Column(scale=2):
                fit = gr.Markdown(elem_id="fit-note")
                with gr.Row():
                    original = gr.Image(label="original", interactive=False, height=200, **PIXELATED)
                    reconstruction = gr.Image(label="reconstruction", interactive=False, height=200, **PIXELATED)
                flipped = gr.Gallery(
                    elem_id="flipped-gallery",
                    label="bit i flipped | what changed (scaled to its largest change; yellow: chosen tokens)",
                    columns=3,
                    height="max-content",
                    **PIXELATED,
                )
                psnr_chart = gr.Plot(label="PSNR per bit", elem_id="flip-chart")
                distance_chart = gr.Plot(label="distances per bit")
                summary = gr.JSON(label="distances", open=False)
        with gr.Accordion(
            "Compare with another tokenizer: LFQ bits against VQ index bits", open=True, elem_id="compare-section"
        ):
            with gr.Row():
                compare_with = gr.Dropdown(
                    v["comparison_choices"],
                    value=v["comparison_choices"][0],
                    allow_custom_value=True,
                    label="tokenizer to compare with (its bits flipped at the same tokens)",
                )
                compare_button = gr.Button("Compare", variant="primary", elem_id="compare-button")
            compare_message = gr.Markdown(elem_id="compare-message")
            with gr.Row():
                compare_loaded = gr.Gallery(
                    elem_id="compare-loaded",
                    label="loaded tokenizer: bit i flipped | what changed (scaled)",
                    columns=3,
                    height="max-content",
                    **PIXELATED,
                )
                compare_other = gr.Gallery(
                    elem_id="compare-other",
                    label="compared tokenizer: bit i flipped | what changed (scaled)",
                    columns=3,
                    height="max-content",
                    **PIXELATED,
                )
            with gr.Row():
                compare_psnr = gr.Plot(label="PSNR per bit", elem_id="compare-psnr")
                compare_distance = gr.Plot(label="LPIPS per bit (L2 without LPIPS weights)")
                compare_judge = gr.Plot(label="the judge's verdict per bit", elem_id="compare-judge")
            _intro(texts.JUDGE)
            compare_summary = gr.JSON(label="comparison", open=False)
        with gr.Accordion("Bit planes and token map", open=False):
            planes_button = gr.Button("Show bit planes")
            planes_message = gr.Markdown(elem_id="planes-message")
            with gr.Row():
                planes = gr.Gallery(
                    elem_id="planes-gallery",
                    label="bit planes (white: bit set)",
                    columns=6,
                    height="max-content",
                    **PIXELATED,
                )
                heat = gr.Plot(label="token indices")
            tokens = gr.JSON(visible=False)
        with gr.Accordion("Random walk in Hamming space", open=False):
            with gr.Row():
                walk_bits = gr.Slider(1, limits["walk_r"], value=v["walk_bits"], step=1, label="bits flipped per step")
                walk_steps = gr.Slider(1, limits["walk_steps"], value=8, step=1, label="steps")
                walk_seed = gr.Number(0, label="seed")
                walk_button = gr.Button("Walk")
            walk_message = gr.Markdown(elem_id="walk-message")
            walk_gallery = gr.Gallery(
                elem_id="walk-gallery",
                label="the walk: bits flipped from the reconstruction, and PSNR to it",
                columns=9,
                height="max-content",
                **PIXELATED,
            )
            walk_plot = gr.Plot(label="change along the walk")
    return SimpleNamespace(
        image=image,
        item=item,
        use_item=use_item,
        caption=caption,
        to_neighbours=to_neighbours,
        bit_ids=bit_ids,
        positions=positions,
        button=button,
        message=message,
        grid=grid,
        fit=fit,
        original=original,
        reconstruction=reconstruction,
        flipped=flipped,
        psnr_chart=psnr_chart,
        distance_chart=distance_chart,
        summary=summary,
        compare_with=compare_with,
        compare_button=compare_button,
        compare_message=compare_message,
        compare_loaded=compare_loaded,
        compare_other=compare_other,
        compare_psnr=compare_psnr,
        compare_distance=compare_distance,
        compare_judge=compare_judge,
        compare_summary=compare_summary,
        planes_button=planes_button,
        planes_message=planes_message,
        planes=planes,
        heat=heat,
        tokens=tokens,
        walk_bits=walk_bits,
        walk_steps=walk_steps,
        walk_seed=walk_seed,
        walk_button=walk_button,
        walk_message=walk_message,
        walk_gallery=walk_gallery,
        walk_plot=walk_plot,
    )


def _neighbours_tab(v: dict) -> SimpleNamespace:
    with gr.Tab("Neighbours", id="neighbours"):
        _intro(texts.NEIGHBOURS)
        with gr.Row():
            with gr.Column(scale=1):
                image = gr.Image(
                    type="filepath",
                    image_mode=None,
                    label="query image",
                    height=240,
                    elem_classes="pixelated",
                    elem_id="query-image",
                )
                with gr.Row(visible=v["dataset_images_visible"]):
                    item = gr.Number(0, label="training image id", elem_id="neighbours-item")
                    use_item = gr.Button("Use training image")
                caption = gr.Markdown(elem_id="neighbours-caption")
                k = gr.Slider(1, v["limits"]["k"], value=8, step=1, label="k")
                button = gr.Button("Find neighbours", variant="primary")
                message = gr.Markdown(elem_id="neighbours-message")
                verdict = gr.Markdown(elem_id="verdict")
            with gr.Column(scale=2):
                galleries = []
                for metric, label in (
                    ("hamming", "by Hamming distance of the tokens"),
                    ("lpips", "by LPIPS"),
                    ("pixel", "by pixel L2 (16×16)"),
                ):
                    shown = metric != "lpips" or v["lpips_ready"]  # else the note in its place says why not
                    galleries.append(
                        gr.Gallery(
                            elem_id=f"{metric}-gallery",
                            label=label,
                            columns=8,
                            height="max-content",
                            visible=shown,
                            **PIXELATED,
                        )
                    )
                    if metric == "lpips":
                        lpips_note = gr.Markdown(visible=not shown, elem_id="lpips-note")
        with gr.Row():
            scatter = gr.Plot(label="distances compared")
            heat = gr.Plot(label="per-token Hamming map")
        with gr.Accordion("The neighbours as JSON (ids, sources, distances, per-token maps)", open=False):
            found = gr.JSON(label="neighbours", open=False)
        with gr.Accordion("The paper's second claim: do Hamming neighbours find the images that look alike?"):
            claim = gr.Markdown(v["second_claim"], elem_id="second-claim")
        with gr.Accordion("Memorization report over generated images", open=False):
            with gr.Row():
                count = gr.Slider(*v["limits"]["report_images"], value=32, step=4, label="generated images")
                seed = gr.Number(0, label="seed")
                plant = gr.Slider(
                    *v["limits"]["report_plant"],
                    elem_id="report-plant",
                    value=0,
                    step=1,
                    label="planted copies (training images copied under 10 edits: does the check find them?)",
                )
                report_button = gr.Button("Run report")
            report_message = gr.Markdown(elem_id="report-message")
            report_text = gr.Markdown(elem_id="report-text")
            report_flagged = gr.Gallery(
                elem_id="report-flagged",
                label="flagged: each generated image | the training image nearest to it",
                columns=8,
                height="max-content",
                visible=False,
                **PIXELATED,
            )
            report_image = gr.Image(
                label="nearest-distance histograms", format="png", interactive=False, elem_id="report-image"
            )
            report_json = gr.JSON(visible=False)
    return SimpleNamespace(
        image=image,
        item=item,
        use_item=use_item,
        caption=caption,
        k=k,
        button=button,
        message=message,
        verdict=verdict,
        galleries=galleries,
        lpips_note=lpips_note,
        scatter=scatter,
        heat=heat,
        found=found,
        claim=claim,
        count=count,
        seed=seed,
        plant=plant,
        report_button=report_button,
        report_message=report_message,
        report_text=report_text,
        report_flagged=report_flagged,
        report_image=report_image,
        report_json=report_json,
    )


def _tokens_tab() -> SimpleNamespace:
    with gr.Tab("Token space", id="tokens"):
        _intro(texts.TOKENS)
        button = gr.Button("Compute", variant="primary")
        message = gr.Markdown(elem_id="tokens-message")
        with gr.Row():
            usage = gr.Plot(label="bit usage")
            codes = gr.Plot(label="code usage")
        umap = gr.Plot(label="UMAP", elem_id="umap-plot")
        with gr.Row():
            view_id = gr.Number(0, label="index id", elem_id="view-id")
            with gr.Column(min_width=160):
                view_button = gr.Button("View", elem_id="view-button")
                view_send = gr.Button("Send to neighbours", elem_id="view-send")
            view_image = gr.Image(
                interactive=False, height=160, label="indexed image", elem_id="view-image", **PIXELATED
            )
            view_caption = gr.Markdown(elem_id="view-caption")
        statistics = gr.JSON(label="statistics", open=False)
        with gr.Accordion("Code atlas", open=True):
            _intro(texts.ATLAS)
            atlas_button = gr.Button("Show the code atlas", elem_id="atlas-button")
            atlas_caption = gr.Markdown(elem_id="atlas-caption")
            atlas = gr.Image(label="code atlas", interactive=False, elem_id="atlas", **PIXELATED)
    return SimpleNamespace(
        button=button,
        message=message,
        usage=usage,
        codes=codes,
        umap=umap,
        view_id=view_id,
        view_button=view_button,
        view_send=view_send,
        view_image=view_image,
        view_caption=view_caption,
        statistics=statistics,
        atlas_button=atlas_button,
        atlas_caption=atlas_caption,
        atlas=atlas,
    )


def _training_tab(v: dict) -> SimpleNamespace:
    enabled = v["training_enabled"]
    with gr.Tab("Training", id="training"):
        _intro(texts.TRAINING if enabled else texts.TRAINING_OFF)
        with gr.Row():
            stage = gr.Radio(v["stages"], value="tokenizer", label="stage")
            name = gr.Textbox("tokenizer-1", label="job name")
            preset = gr.Dropdown(v["train_presets"]["tokenizer"], value="tiny", label="recipe (training preset)")
            dataset = gr.Textbox("procedural", label="dataset (procedural, or a folder in the workspace/data roots)")
        overrides = gr.Textbox("", lines=3, label="overrides, one key=value per line (e.g. training.max_steps=200)")
        with gr.Row():
            launch = gr.Button("Launch", variant="primary", interactive=enabled)
            job = gr.Dropdown([], label="job", allow_custom_value=True, scale=2, min_width=260)  # a whole run name
            stop = gr.Button("Stop", interactive=enabled)
            resume = gr.Button("Resume", interactive=enabled)
            load = gr.Button("Load into explorer", interactive=enabled)
        message = gr.Markdown(elem_id="train-message")
        # The error column wraps, so that the table fits the page (a one-line error made it scroll sideways); the
        # whole error is also the first thing the console shows.
        table = gr.Dataframe(
            elem_id="job-table",
            headers=v["job_columns"],
            datatype=["str"] * len(v["job_columns"]),
            label="jobs",
            interactive=False,
            wrap=True,
            column_widths=v["job_column_widths"],
        )
        with gr.Row():
            curves = gr.Plot(label="training curves")
            sample = gr.Image(
                label="latest samples", interactive=False, height=380, elem_id="train-sample", **PIXELATED
            )
        console = gr.Textbox(  # a failed job's error comes first: shown from the top
            label="console (last lines)", lines=8, max_lines=24, interactive=False, autoscroll=False, elem_id="console"
        )
    return SimpleNamespace(
        stage=stage,
        name=name,
        preset=preset,
        dataset=dataset,
        overrides=overrides,
        launch=launch,
        job=job,
        stop=stop,
        resume=resume,
        load=load,
        message=message,
        table=table,
        curves=curves,
        sample=sample,
        console=console,
    )


# ---------------------------------------------------------------------------------------------------- events


def _api(fn, inputs, outputs, api_name: str, **options) -> None:
    """The public API endpoint of an action, on a hidden trigger: an API client gets refusals as errors."""
    fn = trimmed(fn) if options.get("concurrency_id") == COMPUTE["concurrency_id"] else fn
    gr.Button(api_name, visible=False).click(fn, inputs, outputs, api_name=api_name, **options)


def _ui(trigger, fn, inputs, outputs: list, message, **options):
    """The page's event of an action: a refusal leaves every output as it was (no "Error" badge over the last results)
    and its message stays in `message`, next to the action's button, until the next action; success clears it.
    `message` may be one of `outputs` (then the action's own text goes there on success)."""
    fn = trimmed(fn) if options.get("concurrency_id") == COMPUTE["concurrency_id"] else fn
    own = message in outputs
    targets = outputs if own else [*outputs, message]

    def refused(error: Exception) -> list:
        text = error.message if isinstance(error, gr.Error) else str(error)  # gr.Error: from app/endpoint.py:guarded
        return [f"⚠️ {text}" if t is message else gr.skip() for t in targets]

    def done(result) -> list:
        result = list(result) if isinstance(result, (tuple, list)) and len(outputs) > 1 else [result]
        return result if own else [*result, ""]

    if inspect.isgeneratorfunction(fn):

        def event(*args):
            try:
                for result in fn(*args):
                    yield done(result)
            except (gr.Error, ValueError) as error:
                yield refused(error)

    else:

        def event(*args):
            try:
                return done(fn(*args))
            except (gr.Error, ValueError) as error:
                return refused(error)

    functools.update_wrapper(event, fn)  # Gradio reads the parameters (gr.SelectData) from the signature
    return trigger(event, inputs, targets, **PRIVATE, **options)


def _laid_out(fn, widgets: dict):
    """`fn` with its {widget name: value} result (alone, or first of a tuple: the served widgets come first in an
    event's outputs) laid out in the order of `widgets`, as the event's outputs list them."""

    def laid_out(result) -> list:
        if isinstance(result, dict):
            return [result[name] for name in widgets]
        named, *rest = result
        return [*(named[name] for name in widgets), *rest]

    if inspect.isgeneratorfunction(fn):

        def event(*args):
            for result in fn(*args):
                yield laid_out(result)

    else:

        def event(*args):
            return laid_out(fn(*args))

    functools.update_wrapper(event, fn)
    return event


def _wire(demo, c: Callbacks, v: dict, m, g, f, n, t, j, tabs, timer, index_line) -> None:
    # the pair the server holds now, on every page load and after every switch (a reloaded page shows it too)
    # by the names of Callbacks.served's dict
    widgets = {"pair": m.pair, "tokenizer": m.tokenizer, "generator": m.generator, "info": m.info, "labels": g.labels}
    widgets |= dict(zip(v["sampling_knobs"], g.knobs, strict=True))
    widgets |= {"preset": g.preset, "preset_note": g.preset_note, "step": g.step, "button": g.button, "note": g.note}
    widgets |= {"compare_with": f.compare_with, "walk_bits": f.walk_bits, "index_line": index_line}
    widgets |= {"lpips_gallery": n.galleries[1], "lpips_note": n.lpips_note}
    if set(widgets) != set(c.served()):
        raise TypeError(f"the page's served widgets {sorted(widgets)} are not those served: {sorted(c.served())}")
    served = list(widgets.values())
    cleared = [g.gallery, g.frame, g.masked, g.progress]  # a new pair: results (and errors) of the old one go
    demo.load(c.explore.model_info, None, m.info, api_name="model_info", **LIGHT)
    demo.load(_laid_out(c.served, widgets), None, served, **PRIVATE, **LIGHT)
    # the public endpoint first: a private event of the same function takes its name otherwise
    gr.Button("Index status", visible=False).click(
        c.explore.index_status, None, index_line, api_name="index_status", **LIGHT
    )
    timer.tick(c.status, None, [index_line, n.galleries[1], n.lpips_note], show_progress="hidden", **PRIVATE, **LIGHT)
    _ui(m.pair.input, c.explore.pair_sources, m.pair, [m.tokenizer, m.generator], m.message)
    _api(c.explore.load_models, [m.tokenizer, m.generator], [m.info, g.labels, m.message], "load_models", **COMPUTE)
    # A load streams what it is loading into its message, the only place that shows progress (not every served widget)
    loading = {"show_progress_on": [m.message], **COMPUTE}
    load = _laid_out(c.load_served, widgets)
    _ui(m.load.click, load, [m.tokenizer, m.generator], [*served, m.message, *cleared], m.message, **loading)

    # a preset chosen by the user (`served` sets the box to the loaded generator's own sampling: no preset applied)
    g.preset.input(c.explore.apply_preset, g.preset, [*g.knobs, g.preset_note], **PRIVATE, **LIGHT)
    generate = [g.labels, g.count, g.seed, *g.knobs]
    generated = [g.gallery, g.masked, g.unmasking, g.step, g.frame, g.files, g.progress]
    _api(c.explore.generate, generate, generated, "generate", **COMPUTE)
    _ui(g.button.click, c.explore.generate, generate, generated, g.message, **COMPUTE)
    g.step.input(
        c.explore.show_step, [g.unmasking, g.step], [g.frame, g.masked], show_progress="hidden", **PRIVATE, **LIGHT
    )
    g.gallery.select(c.explore.pick_generated, g.files, g.chosen, **PRIVATE, **LIGHT)
    _ui(
        g.to_flip.click,
        c.explore.send_generated_to("flip", True),
        [g.files, g.chosen],
        [f.image, tabs, f.caption],
        g.progress,
    )
    _ui(
        g.to_neighbours.click,
        c.explore.send_generated_to("neighbours"),
        [g.files, g.chosen],
        [n.image, tabs],
        g.progress,
    )
    g.to_neighbours.click(None, None, n.caption, js="() => ''")  # the query is no longer the picked training image

    _api(c.explore.dataset_image, f.item, [f.image, f.caption], "dataset_image")
    _ui(f.use_item.click, c.explore.dataset_image, f.item, [f.image, f.caption], f.caption)
    # A new image (uploaded, a dataset image, sent from Generate, or none) makes every result of the last one, and
    # its warnings, stale: they go. An upload that is no image is taken off at once, its caption saying why.
    f.image.upload(c.explore.uploaded, f.image, [f.image, f.caption], **UNREAD, **PRIVATE, **LIGHT)
    stale = [f.message, f.original, f.reconstruction, f.flipped, f.psnr_chart, f.distance_chart, f.summary, f.grid]
    stale += [f.fit, f.compare_message, f.compare_loaded, f.compare_other, f.compare_psnr, f.compare_distance]
    stale += [f.compare_judge, f.compare_summary, f.planes_message, f.planes, f.heat, f.tokens, f.walk_message]
    stale += [f.walk_gallery, f.walk_plot]
    f.image.change(c.explore.emptied(len(stale)), None, stale, show_progress="hidden", **PRIVATE, **LIGHT)
    flip = [f.image, f.bit_ids, f.positions]
    flipped = [f.original, f.reconstruction, f.flipped, f.psnr_chart, f.distance_chart, f.summary, f.grid, f.fit]
    _api(c.explore.flip_bits, flip, flipped, "flip_bits", **UNREAD, **COMPUTE)
    _ui(f.button.click, c.explore.flip_bits, flip, flipped, f.message, **UNREAD, **COMPUTE)
    _ui(f.grid.select, c.explore.toggle_token, [f.image, f.positions], [f.positions, f.grid], f.message, **UNREAD)
    compare = [f.image, f.compare_with, f.bit_ids, f.positions]
    compared = [f.compare_loaded, f.compare_other, f.compare_psnr, f.compare_distance, f.compare_judge]
    compared += [f.compare_summary]
    _api(c.explore.compare_flips, compare, compared, "compare_flips", **UNREAD, **COMPUTE)
    _ui(f.compare_button.click, c.explore.compare_flips, compare, compared, f.compare_message, **UNREAD, **COMPUTE)
    _api(c.explore.token_map, f.image, [f.planes, f.heat, f.tokens], "token_map", **UNREAD, **COMPUTE)
    _ui(
        f.planes_button.click,
        c.explore.token_map,
        f.image,
        [f.planes, f.heat, f.tokens],
        f.planes_message,
        **UNREAD,
        **COMPUTE,
    )
    walk = [f.image, f.walk_bits, f.walk_steps, f.walk_seed]
    _api(c.explore.bit_walk, walk, [f.walk_gallery, f.walk_plot], "bit_walk", **UNREAD, **COMPUTE)
    _ui(
        f.walk_button.click,
        c.explore.bit_walk,
        walk,
        [f.walk_gallery, f.walk_plot],
        f.walk_message,
        **UNREAD,
        **COMPUTE,
    )
    _ui(f.to_neighbours.click, c.search.image_to_neighbours, f.image, [n.image, n.caption, tabs], f.message, **UNREAD)

    _api(c.search.training_image, n.item, [n.image, n.caption], "training_image")
    _ui(n.use_item.click, c.search.training_image, n.item, [n.image, n.caption], n.caption)
    for event in (n.image.upload, n.image.clear):  # a query of the user's own: the picked image's caption goes
        event(None, None, n.caption, js="() => ''")
    found = [*n.galleries, n.verdict, n.scatter, n.heat, n.found]
    n.image.change(c.search.neighbours_cleared, None, [*found, n.claim], show_progress="hidden", **PRIVATE, **LIGHT)
    _api(c.search.neighbours, [n.image, n.k], found, "neighbours", **UNREAD, **COMPUTE)
    _ui(n.button.click, c.search.neighbours, [n.image, n.k], found, n.message, **UNREAD, **COMPUTE).then(
        c.search.second_claim, n.found, n.claim, **PRIVATE
    )
    report = [n.report_image, n.report_text, n.report_flagged, n.report_json]
    _api(c.search.memorization_report, [n.count, n.seed, n.plant], report, "memorization_report", **COMPUTE)
    _ui(
        n.report_button.click,
        c.search.memorization_report,
        [n.count, n.seed, n.plant],
        report,
        n.report_message,
        **COMPUTE,
    )

    space = [t.usage, t.codes, t.umap, t.statistics]
    _api(c.search.token_space, None, space, "token_space", **COMPUTE)
    _ui(t.button.click, c.search.token_space, None, space, t.message, **COMPUTE)
    _api(c.search.indexed_image, t.view_id, [t.view_image, t.view_caption], "indexed_image")
    _ui(t.view_button.click, c.search.indexed_image, t.view_id, [t.view_image, t.view_caption], t.view_caption)
    sent = [n.image, n.caption, t.view_image, t.view_caption, tabs]
    _ui(t.view_send.click, c.search.training_image_to_neighbours, t.view_id, sent, t.view_caption)
    _api(c.explore.code_atlas, None, [t.atlas, t.atlas_caption], "code_atlas", **COMPUTE)
    _ui(t.atlas_button.click, c.explore.code_atlas, None, [t.atlas, t.atlas_caption], t.atlas_caption, **COMPUTE)

    j.stage.change(c.training.train_presets_update, j.stage, j.preset, **PRIVATE, **LIGHT)
    launch = [j.stage, j.name, j.preset, j.dataset, j.overrides]
    _api(c.training.train_launch, launch, [j.table, j.job, j.message], "train_launch")
    _ui(j.launch.click, c.training.train_launch, launch, [j.table, j.job, j.message], j.message)
    gr.Button("status", visible=False).click(
        c.training.train_status, None, [j.table, j.job], api_name="train_status", **LIGHT
    )
    for button, fn, name in (
        (j.stop, c.training.train_stop, "train_stop"),
        (j.resume, c.training.train_resume, "train_resume"),
    ):
        _api(fn, j.job, [j.table, j.message], name)
        _ui(button.click, fn, j.job, [j.table, j.message], j.message)
    _api(c.train_load, j.job, [m.info, g.labels, m.message, m.pair, j.message], "train_load", **COMPUTE)
    loading = {"show_progress_on": [j.message], **COMPUTE}
    load = _laid_out(c.train_load_served, widgets)
    _ui(j.load.click, load, j.job, [*served, m.message, j.message, *cleared], j.message, **loading)
    j.job.change(c.training.train_curves, j.job, [j.curves, j.sample, j.console], api_name="train_curves", **LIGHT)
    watched = [j.table, j.curves, j.sample, j.console, j.message]
    timer.tick(c.training.refresh, [j.job, j.message], watched, show_progress="hidden", **PRIVATE, **LIGHT)
    demo.load(c.training.jobs_view, None, [j.table, j.job], **PRIVATE, **LIGHT)
