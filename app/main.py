"""`python -m app`: load the models, start the index preparation in the background, serve the explorer."""

from __future__ import annotations

import asyncio
import logging
import os
import time

os.environ.setdefault("GRADIO_ANALYTICS_ENABLED", "False")

from app.settings import Settings, parse_settings  # noqa: E402

logger = logging.getLogger("app")

__all__ = ["main", "prepare", "create_app", "launch"]


def create_app(settings: Settings):
    """(state, demo) ready to launch; the index is opened or built in a background thread."""
    from app.callbacks import Callbacks
    from app.files import write_images_once
    from app.layout import build
    from app.memory import limit_arenas
    from app.state import AppState

    limit_arenas()  # before Gradio's worker threads start (app/memory.py)
    write_images_once()  # identical results of concurrent requests share a cached file: never rewrite it
    state = AppState(settings)
    state.start_background()

    def blocks():
        demo = build(Callbacks(state))
        # api_open=False: Gradio otherwise answers a direct POST to /run/<endpoint> of any event outside the queue,
        # past its concurrency limit and the queue's bound; only the light events (layout.LIGHT) are sent that way
        demo.queue(default_concurrency_limit=settings.concurrency, max_size=settings.max_queue, api_open=False)
        return demo

    async def in_a_running_loop():
        return blocks()

    try:
        asyncio.get_running_loop()
    except RuntimeError:  # the usual case: a script. Gradio makes an event loop (and drops the one before) each time
        # it builds its server app outside a running loop, three per start; dropped loops that the garbage collector
        # reaches in a cycle close a socket twice, which Spaces' hot-reload scan makes happen ("Exception ignored in
        # BaseEventLoop.__del__ ... Invalid file descriptor: -1"). Built inside one running loop, none is made.
        return state, asyncio.run(in_a_running_loop())
    return state, blocks()  # called from a running loop (a notebook): Gradio uses that one


def launch(demo, settings: Settings, **kwargs):
    from app.texts import CSS, JS

    return demo.launch(
        server_name=settings.host,
        server_port=settings.port,
        auth=settings.auth,
        max_file_size=f"{settings.max_upload_mb:g}mb",
        allowed_paths=[str(settings.workspace)],
        footer_links=["api"],
        show_error=True,  # messages only: callbacks raise gr.Error; this adds input-decoding errors
        css=CSS,
        js=JS,
        **kwargs,
    )


def prepare(argv: list[str] | None = None):
    """(settings, state, demo) of a command line, logged, ready to launch; a UserError when the models cannot load."""
    started = time.time()
    settings = parse_settings(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s: %(message)s")
    state, demo = create_app(settings)
    logger.info("models loaded in %.1f s: %s", time.time() - started, state.models.describe())
    if settings.exposed:
        logger.info(
            "exposed server: training %s, training-set images %s",
            "on" if settings.training_enabled else "off",
            "shown" if settings.dataset_images_visible else "hidden",
        )
    return settings, state, demo


def main(argv: list[str] | None = None) -> int:
    from app.validation import UserError

    try:
        settings, _, demo = prepare(argv)
    except UserError as error:
        print(f"error: {error}")
        return 2
    launch(demo, settings)
    return 0
