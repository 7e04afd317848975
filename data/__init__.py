"""Image datasets and MaskBit's preprocessing, shared by training, indexes, the app and the benchmarks.

build_dataset(spec, split)    "procedural", an image folder (<class>/<image>) or tar shards (jpg + cls)
eval_view(spec, split, ...)   item i → (image (3, R, R) in [0, 1], label), resized and center-cropped
heldout_images(spec, count)   the first images of the held-out split, as one tensor (memorization thresholds)
"""

from data.datasets import (
    PROCEDURAL_CLASSES,
    ImageFolder,
    Preprocessing,
    ProceduralShapes,
    TarShards,
    build_dataset,
    export_dataset,
    write_tar_shards,
)
from data.views import EvalView, eval_view, heldout_images, split_images

__all__ = [
    "PROCEDURAL_CLASSES",
    "ProceduralShapes",
    "ImageFolder",
    "TarShards",
    "Preprocessing",
    "build_dataset",
    "export_dataset",
    "write_tar_shards",
    "EvalView",
    "eval_view",
    "split_images",
    "heldout_images",
]
