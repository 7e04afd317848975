"""Hugging Face Spaces entry point (README front matter: `app_file: app/space.py`).

Spaces run the app file as a script; this puts the project root on the import path and binds where Spaces expect.
Configure the Space with the MASKBIT_* variables of `python -m app --help` (training stays off on a Space unless
MASKBIT_ENABLE_TRAINING and MASKBIT_AUTH are set; training-set images stay hidden unless
MASKBIT_SHOW_DATASET_IMAGES is set).
"""

import os
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
os.environ.setdefault("MASKBIT_HOST", os.environ.get("GRADIO_SERVER_NAME", "0.0.0.0"))
os.environ.setdefault("GRADIO_ANALYTICS_ENABLED", "False")

from app.main import launch, prepare  # noqa: E402
from app.validation import UserError  # noqa: E402

try:
    # `demo` in this module's namespace: Spaces' hot reload (Gradio's SpacesReloader) looks for the app by that name
    settings, state, demo = prepare([])
except UserError as error:
    sys.exit(f"error: {error}")
launch(demo, settings)
