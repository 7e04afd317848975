import os

os.environ.setdefault("GRADIO_ANALYTICS_ENABLED", "False")  # before gradio is imported: no analytics look-ups

from app.main import main  # noqa: E402

raise SystemExit(main())
