"""`python -m app`: load the models, start the index preparation in the background, serve the explorer."""

from __future__ import annotations

import logging
import os
import time

os.environ.setdefault("GRADIO_ANALYTICS_ENABLED", "False")

from app.settings import Settings, parse_settings  # noqa: E402

logger = logging.getLogger("app")

__all__ = ["main", "create_app"]


def create_app(settings: Settings):
    """(state, demo) ready to launch; the index is opened or built in a background thread."""
    from app.callbacks import Callbacks
    from app.files import write_images_once
    from app.layout import build
    from app.state import AppState

    write_images_once()  # identical results of concurrent requests share a cached file: never rewrite it
    state = AppState(settings)
    state.start_background()
    demo = build(Callbacks(state))
    demo.queue(default_concurrency_limit=settings.concurrency, max_size=settings.max_queue)
    return state, demo


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


def main(argv: list[str] | None = None) -> int:
    started = time.time()
    settings = parse_settings(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s: %(message)s")
    from app.validation import UserError

    try:
        state, demo = create_app(settings)
    except UserError as error:
        print(f"error: {error}")
        return 2
    logger.info("models loaded in %.1f s: %s", time.time() - started, state.models.describe())
    if settings.exposed:
        logger.info(
            "exposed server: training %s, training-set images %s",
            "on" if settings.training_enabled else "off",
            "shown" if settings.dataset_images_visible else "hidden",
        )
    launch(demo, settings)
    return 0
