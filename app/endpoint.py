"""What every endpoint shares: the app state, the uploaded-image input, how failures become messages (`guarded`),
and the ZeroGPU decorator (`gpu`: on a Space a GPU is attached only inside functions wrapped by spaces.GPU)."""

from __future__ import annotations

import functools
import inspect
import logging

import gradio as gr
import torch

from app.state import AppState
from app.validation import UserError, load_upload, public_message
from maskbit.images import save_image

logger = logging.getLogger("app")

__all__ = ["Endpoints", "guarded", "gpu"]

try:  # Hugging Face ZeroGPU: a GPU is attached only inside functions decorated with spaces.GPU
    import spaces

    gpu = spaces.GPU
except ImportError:  # everywhere else

    def gpu(fn):
        return fn


def _as_gradio_error(error: Exception, name: str) -> gr.Error:
    if isinstance(error, (UserError, ValueError, FileNotFoundError)):
        return gr.Error(public_message(str(error)), print_exception=False)
    if isinstance(error, torch.OutOfMemoryError):
        return gr.Error("out of memory: ask for fewer images or steps", print_exception=False)
    logger.exception("unexpected error in %s", name)
    message = f"internal error ({type(error).__name__}); the request was not completed, the server log has details"
    return gr.Error(message, print_exception=False)


def guarded(fn):
    """Expected failures become a message for the user; anything else is logged and reported without traceback.
    Works for plain methods and for generators (streamed endpoints)."""
    if inspect.isgeneratorfunction(fn):

        @functools.wraps(fn)
        def streamed(*args, **kwargs):
            try:
                yield from fn(*args, **kwargs)
            except gr.Error:
                raise
            except Exception as error:
                raise _as_gradio_error(error, fn.__name__) from None

        return streamed

    @functools.wraps(fn)
    def wrapper(*args, **kwargs):
        try:
            return fn(*args, **kwargs)
        except gr.Error:
            raise
        except Exception as error:
            raise _as_gradio_error(error, fn.__name__) from None

    return wrapper


class Endpoints:
    """The base of the callback classes of each tab (app/explore.py, app/search.py, app/training.py)."""

    def __init__(self, state: AppState):
        self.state = state
        self.settings = state.settings

    def _image(self, image, size: int | None = None) -> torch.Tensor:
        """An uploaded file (a path, or Gradio's unread file payload) → (3, S, S) at `size`, by default the
        tokenizer's (a search reads it at the index's size, as `indexes search` does)."""
        s = self.settings
        size = size or self.state.models.image_size
        return load_upload(image, size, int(s.max_upload_mb * 1e6), s.max_upload_pixels)

    def _png(self, image: torch.Tensor, name: str) -> str:
        """Images handed between tabs travel as PNG files in the app's bounded temporary folder."""
        return str(save_image(image, self.state.files.path(f"{name}.png")))
