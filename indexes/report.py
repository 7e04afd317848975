"""Memorization report: how close are generated images to the training set, compared with real held-out images?

For every metric, the distance from each image to its nearest indexed (training) image is computed for M
generated images and for N held-out real images. A generated image is flagged when it is closer to a training image
than the p-th percentile of the held-out distances (p = 1 by default): real images the model never saw are rarely
that close, so such a generation is a memorization candidate. Per metric the report adds the statistics of
`indexes.audit` (Meehan's C_T over the finest partition that fits the sample, AuthPct, Carlini's relative-distance
flags, cliques of near-identical generations) and one verdict sentence over all metrics. With `plant=N` it also
plants copies of N training images under the edits of `indexes.plant` among held-out images that did not set the
threshold, and measures each metric's recall, ROC AUC and false-positive rate.

The pipeline, one function per step, the same for the CLI and the app:
    report_inputs     generated images (seeded per image chunk) and the index dataset's held-out images
    compute_report    a typed `Report`: one `MetricReport` per metric, a `PlantedReport`, the verdict
    write_report      report.json, report.html/png, galleries, planted.png (rendered by `indexes.rendering`),
                      written beside `out` and swapped in at once
`memorization_report` is compute + write.

The verdict. A metric finds the generations *closer* to the training set than held-out images when C_T < −3 (C_T is
about N(0, 1) when the model neither copies nor underfits) or when it flags far more generations than the held-out
percentile would (binomial p < 0.001). Closer is not the same as copied: a generator whose samples are smooth or
blurry is close in pixel distance (and LPIPS) to the smooth training images without copying any one of them; the
bundled generator once measured 13.8 % flagged and C_T −4.3 by pixel distance while Hamming C_T was +2.5. So:
- "Possible copying by ..." needs a test on bit tokens (the Hamming distance, or one of its window tests for
  shifted, mirrored and partial copies, `indexes.edited`) among the metrics that find the generations closer, or,
  in a metric that finds them closer, Carlini's relative criterion (a generation much closer to one training image
  than to its other near neighbours: a copy of *that* image, not of a smooth region of the training set) flagging
  far more generations than held-out images (binomial p < 0.001 at the held-out rate);
- "No copy confirmed: ..." when only pixel distance or LPIPS finds them closer, naming which metric says what;
- "No sign of copying: ..." otherwise.
Each sentence gives every metric's C_T and flagged share.
"""

from __future__ import annotations

import json
import re
import weakref
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import NamedTuple

import numpy as np
import torch
from scipy.stats import binom

from indexes import audit, edited, rendering
from indexes import plant as plant_module
from indexes.sources import load_indexed_images
from indexes.store import ImageIndex, IndexError_, pixel_features
from maskbit import bits
from maskbit.files import atomic_directory, explain_full_disk, write_json_atomic
from maskbit.images import image_grid, load_image

__all__ = [
    "GENERATION_BATCH",
    "MetricReport",
    "PlantedReport",
    "REPORT_METRICS",
    "Report",
    "ReportMetric",
    "ReportInputs",
    "compute_report",
    "memorization_report",
    "report_inputs",
    "summary",
    "verdict",
    "write_report",
]

COPYING_C_T = -3.0  # C_T below this reads as closer than held-out images (about N(0, 1) under H0)
EXCESS_P_VALUE = 1e-3  # a flagged count this unlikely at the held-out rate reads as an excess
GENERATION_BATCH = 16  # images generated per call, seeded seed + first: the same images whoever asks
REPORT_FILE = re.compile(r"^(report\.(json|html|png)|closest_\w+\.png|planted\.png)$")
PLOT_BYTES = 8 << 20  # about what the HTML page (plotly inline) and the PNG of the plots take


# ---------------------------------------------------------------------------------------------------- metrics


class ReportMetric(NamedTuple):
    """A metric of the report. label: its axis label. search: None for a metric of the index itself (`index.search`);
    else search(index, images (B, 3, S, S), tokens (B, h, w), k) → (ids (B, k) int64, distances (B, k) float64,
    nearest first; (B, 1) when `nearest_only`, which leaves out AuthPct and Carlini's flags), run on every image the
    report searches (generated, held-out, planted copies). pairwise(index, images, tokens) → (B, B) distances among
    the generated images, for the cliques (None: no cliques). bit_tokens: a test on the bit tokens, which can confirm
    copying in the verdict (pixel distance and LPIPS cannot: module docstring)."""

    label: str
    search: Callable | None = None
    pairwise: Callable | None = None
    bit_tokens: bool = False
    nearest_only: bool = False


NEAREST_ONLY = "this test finds each image's nearest training image only"
_window_searches: weakref.WeakKeyDictionary = weakref.WeakKeyDictionary()  # index → its EditedSearch


def _window_test(test: str) -> ReportMetric:
    """A window test of `indexes.edited` as a metric of the report (its window indexes built once per index)."""

    def search(index: ImageIndex, images: torch.Tensor, tokens: torch.Tensor, k: int) -> tuple[np.ndarray, np.ndarray]:
        if index not in _window_searches:
            _window_searches[index] = edited.EditedSearch(index)
        found = _window_searches[index].search(images, tokens, [test])[test]
        return found.ids[:, None], found.distances[:, None]

    return ReportMetric(edited.TESTS[test].label, search, bit_tokens=True, nearest_only=True)


# Every metric a report can hold, in its order. A new test of copying is one row here; the statistics, planted
# table, verdict inputs and renderers follow.
REPORT_METRICS: dict[str, ReportMetric] = {
    "hamming": ReportMetric("Hamming distance (bits)", bit_tokens=True),
    "lpips": ReportMetric("LPIPS"),
    "pixel": ReportMetric("squared pixel L2 (16×16)"),
    "hamming_shifted": _window_test("shifted"),  # a copy moved by up to 2 tokens
    "hamming_flipped": _window_test("flipped"),  # a mirrored copy
    "hamming_part": _window_test("part"),  # part of a training image pasted onto another
}


# ---------------------------------------------------------------------------------------------------- inputs


@dataclass(frozen=True)
class ReportInputs:
    """What a report is computed from. generated (M, 3, S, S), heldout (N, 3, S, S) in [0, 1]; with plant > 0 the
    held-out images are twice as many as the threshold uses (`compute_report` splits them); seed: the planted
    copies' (the generation's too, when `report_inputs` generated the images)."""

    generated: torch.Tensor
    names: list[str]
    heldout: torch.Tensor
    plant: int = 0
    seed: int = 0


def report_inputs(
    index: ImageIndex,
    count: int,
    seed: int = 0,
    plant: int = 0,
    *,
    generator=None,
    sampling=None,
    generated: Sequence[str | Path] | None = None,
    heldout: int | None = None,
    heldout_dataset: str | None = None,
    heldout_split: str = "test",
    progress: Callable[[int, int], None] | None = None,
) -> ReportInputs:
    """The one recipe for a report's inputs (the CLI and the app both call it, so one seed gives one report).

    Generated images: the first `count` image files of `generated`, or `count` images of `generator` (with the index's
    tokenizer and `sampling`), class i % num_classes for image i, generated GENERATION_BATCH at a time, each chunk
    seeded `seed + first`. Held-out images: the first `heldout` images (default: as many as the index's calibration
    used, so that the thresholds equal the Neighbours tab's; else `count`) of `heldout_split` of `heldout_dataset`
    (default: the dataset the index holds, at its seed), twice as many with plant > 0. `seed` also draws the planted
    copies. Bad input raises ValueError naming the parameter, before anything is generated."""
    from data import heldout_images
    from maskbit import generate
    from maskbit.sampling import check_seed

    seed = check_seed(seed)
    if isinstance(count, bool) or not isinstance(count, int) or count < 1:
        raise ValueError(f"count must be a whole number ≥ 1, got {count!r}")
    if plant:
        plant_module.planted_ids(len(index), plant, seed)  # refuses plant > len(index) by name
    if (generator is None) == (generated is None):
        raise ValueError("give either generator (a model to generate with) or generated (image files), not both")
    described = index.dataset
    if heldout_dataset is None and described is None:
        raise ValueError("heldout_dataset: the index holds no dataset to draw held-out images of; name one")
    spec = heldout_dataset or described.spec
    dataset_seed = described.seed if described is not None and described.spec == spec else 0
    calibration = next(iter(index.calibration.values()), None)
    held = heldout or (calibration.heldout_images if calibration else count)
    size = index.image_size
    if generated is not None:
        paths = [Path(p) for p in generated][:count]
        if not paths:
            raise ValueError("generated: no image files given")
        images, names = torch.stack([load_image(p, size) for p in paths]), [str(p) for p in paths]
    else:
        labels = torch.arange(count) % generator.config.num_classes
        chunks = []
        for first in range(0, count, GENERATION_BATCH):
            chunk = labels[first : first + GENERATION_BATCH]
            chunks.append(generate(generator, index.tokenizer, chunk, sampling, seed=seed + first).cpu())
            if progress:
                progress(first + len(chunk), count)
        images = torch.cat(chunks)
        names = [f"generated:{i}:class{int(c)}" for i, c in enumerate(labels)]
    # with plant, twice as many: half set the threshold, half are the real images among the planted copies
    heldout_set = heldout_images(spec, 2 * held if plant else held, size, dataset_seed, heldout_split)
    return ReportInputs(images, names, heldout_set, plant, seed)


# ---------------------------------------------------------------------------------------------------- results


@dataclass
class MetricReport:
    """One metric's results. distances (M,), (N,): each image's distance to its nearest training image."""

    label: str
    threshold: float
    generated_distances: np.ndarray
    heldout_distances: np.ndarray
    flagged_p_value: float
    flagged: list[dict]
    c_t: audit.CTFit
    auth_pct: float | None
    auth_pct_note: str | None
    relative_flagged_fraction: float | None
    heldout_relative_flagged_fraction: float | None
    relative_p_value: float | None
    relative_neighbours: int
    relative_note: str | None
    cliques: list[list[str]]

    @property
    def flagged_fraction(self) -> float:
        return len(self.flagged) / len(self.generated_distances)

    def to_json(self) -> dict:
        return {
            "label": self.label,
            "threshold": self.threshold,
            "generated": _summary(self.generated_distances),
            "heldout": _summary(self.heldout_distances),
            "flagged_fraction": self.flagged_fraction,
            "flagged_p_value": self.flagged_p_value,
            "flagged": self.flagged,
            "c_t": self.c_t.c_t,
            "c_t_reason": self.c_t.to_json(),
            "auth_pct": self.auth_pct,
            "auth_pct_note": self.auth_pct_note,
            "relative_flagged_fraction": self.relative_flagged_fraction,
            "heldout_relative_flagged_fraction": self.heldout_relative_flagged_fraction,
            "relative_p_value": self.relative_p_value,
            "relative_neighbours": self.relative_neighbours,
            "relative_alpha": audit.CARLINI_ALPHA,
            "relative_note": self.relative_note,
            "cliques": self.cliques,
            "generated_distances": self.generated_distances.tolist(),
            "heldout_distances": self.heldout_distances.tolist(),
        }


@dataclass
class PlantedReport:
    """Planted copies: `count` training images (`ids`) under every edit, among `controls` real held-out images.
    scores and distances per metric; copy_distances: metric → edit name → (count,)."""

    ids: np.ndarray
    controls: int
    scores: dict[str, plant_module.PlantedScores]
    copy_distances: dict[str, dict[str, np.ndarray]]
    real_distances: dict[str, np.ndarray]
    edits: tuple[plant_module.Edit, ...] = plant_module.EDITS

    def to_json(self) -> dict:
        return {
            "count": len(self.ids),
            "edits": [edit.to_json() for edit in self.edits],
            "controls": self.controls,
            "split": "held-out images at even positions set the threshold; those at odd positions are the real images",
            "ids": self.ids.tolist(),
            "metrics": {
                metric: {
                    "recall": scores.recall,
                    "auc": scores.auc,
                    "false_positive_rate": scores.false_positive_rate,
                    "copy_distances": {name: d.tolist() for name, d in self.copy_distances[metric].items()},
                    "real_distances": self.real_distances[metric].tolist(),
                }
                for metric, scores in self.scores.items()
            },
        }


@dataclass
class Report:
    """A computed report: per metric a `MetricReport`, the planted copies, and the pictures to write (per metric the
    closest generated/training pairs, and the first planted image under every edit)."""

    percentile: float
    generated_images: int
    heldout_images: int
    index: str
    indexed_images: int
    metrics: dict[str, MetricReport]
    planted: PlantedReport | None = None
    pictures: dict[str, torch.Tensor] = field(default_factory=dict)  # file name → (3, H, W)

    def to_json(self) -> dict:
        """report.json."""
        value = {
            "verdict": "",
            "percentile": self.percentile,
            "generated_images": self.generated_images,
            "heldout_images": self.heldout_images,
            "index": self.index,
            "indexed_images": self.indexed_images,
            "metrics": {metric: result.to_json() for metric, result in self.metrics.items()},
        }
        if self.planted is not None:
            value["planted"] = self.planted.to_json()
        value["verdict"] = verdict(value)
        return value


SUMMARY_DROPS = ("generated_distances", "heldout_distances", "flagged", "copy_distances", "real_distances")


def summary(report: dict) -> dict:
    """report.json without its per-image lists (distances, flagged images): what a page shows."""
    if isinstance(report, dict):
        return {key: summary(value) for key, value in report.items() if key not in SUMMARY_DROPS}
    return report


# ---------------------------------------------------------------------------------------------------- computing


def compute_report(
    index: ImageIndex,
    generated: torch.Tensor,
    heldout: torch.Tensor,
    percentile: float = 1.0,
    gallery_size: int = 8,
    generated_names: list[str] | None = None,
    tau: float | None = None,
    *,
    plant: int = 0,
    plant_seed: int = 0,
) -> Report:
    """generated (M, 3, S, S), heldout (N, 3, S, S) in [0, 1]. tau: Meehan's minimum share of the generated images
    for a cell to enter C_T (default 20 / M, as dgm-eval); C_T's partition is the finest that fits the sample
    (`audit.fit_c_t`), and report.json's `c_t_reason` says which and why.

    plant: also plant that many copies of training images under each edit of `indexes.plant` and measure how many
    the threshold finds. The held-out images are then split by position: those at even positions (0, 2, 4, ...) set
    the threshold and C_T, those at odd positions are the real images mixed with the copies (and the hosts of the
    half-pasted copies), so that the false-positive rate is measured on images the threshold never saw. plant_seed
    draws the planted images and the noise. Bad input raises ValueError naming the parameter."""
    generated, heldout = generated.cpu(), heldout.cpu()  # the index searches on its own device
    _check_images(generated, "generated")
    _check_images(heldout, "heldout")
    if tau is not None and not 0 < tau < 1:  # also refuses NaN
        raise ValueError(f"tau must lie in (0, 1), got {tau}")
    if not 0 <= percentile <= 100:
        raise ValueError(f"percentile must lie in [0, 100], got {percentile}")
    if generated_names is not None and len(generated_names) != len(generated):
        raise ValueError(f"generated_names: {len(generated_names)} names for {len(generated)} generated images")
    controls = None
    if plant:
        ids = plant_module.planted_ids(len(index), plant, plant_seed)  # refuses plant > len(index) by name
        if len(heldout) < 4:
            raise ValueError(
                f"heldout: plant splits the held-out images in two (threshold / real images among the copies); "
                f"give at least 4, got {len(heldout)}"
            )
        heldout, controls = heldout[0::2], heldout[1::2]
    names = generated_names or [f"generated:{i}" for i in range(len(generated))]
    neighbours = min(audit.CARLINI_NEIGHBOURS, len(index))  # Carlini's n, or all there is in a small index
    near_generated, generated_tokens = _nearest(index, generated, k=neighbours)
    near_heldout, _ = _nearest(index, heldout, k=neighbours)
    partitions = training_partitions(index)
    report = Report(percentile, len(generated), len(heldout), str(index.directory), len(index), {})
    for metric, (gen_ids, gen_neighbours) in near_generated.items():
        held_ids, held_neighbours = near_heldout[metric]
        _check_distances(gen_neighbours, f"generated ({metric} distances)")
        _check_distances(held_neighbours, f"heldout ({metric} distances)")
        gen_distances, nearest_ids = gen_neighbours[:, 0], gen_ids[:, 0]
        held_distances = held_neighbours[:, 0]
        threshold = float(np.percentile(held_distances, percentile))
        flagged = np.flatnonzero(gen_distances < threshold)
        c_t = audit.fit_c_t(held_distances, held_ids[:, 0], gen_distances, nearest_ids, partitions, tau)
        authenticity, authenticity_note = _auth_pct(index, metric, gen_distances, nearest_ids)
        relative, relative_note = _relative_flagged(index, metric, gen_neighbours)
        held_relative, _ = _relative_flagged(index, metric, held_neighbours)
        pairwise = _pairwise_distances(index, metric, generated, generated_tokens)
        report.metrics[metric] = MetricReport(
            label=REPORT_METRICS[metric].label if metric in REPORT_METRICS else metric,
            threshold=threshold,
            generated_distances=gen_distances,
            heldout_distances=held_distances,
            flagged_p_value=_excess_p_value(len(flagged), len(gen_distances), percentile / 100),
            flagged=[
                {
                    "generated": names[i],
                    "generated_position": int(i),  # in `generated`
                    "distance": float(gen_distances[i]),
                    "nearest_id": int(nearest_ids[i]),  # in the index
                    "nearest": index.sources[nearest_ids[i]]["source"],
                    "label": index.sources[nearest_ids[i]]["label"],
                }
                for i in flagged[np.argsort(gen_distances[flagged])]
            ],
            c_t=c_t,
            auth_pct=authenticity,
            auth_pct_note=authenticity_note,
            relative_flagged_fraction=relative,
            heldout_relative_flagged_fraction=held_relative,
            relative_p_value=_relative_p_value(relative, held_relative, len(gen_distances), len(held_distances)),
            relative_neighbours=neighbours,
            relative_note=relative_note,
            cliques=[]
            if pairwise is None
            else [[names[i] for i in group] for group in audit.cliques(pairwise, threshold)],
        )
        report.pictures[f"closest_{metric}.png"] = _gallery(index, generated, nearest_ids, gen_distances, gallery_size)
    if plant:
        thresholds = {metric: result.threshold for metric, result in report.metrics.items()}
        report.planted, report.pictures["planted.png"] = _planted(index, ids, controls, thresholds, plant_seed)
    return report


def training_partitions(index: ImageIndex) -> audit.TrainingPartitions:
    """C_T's partitions of the indexed images: their classes (when every one has a label), k-means cells of their
    ±1 bit tokens (Euclidean distance between ±1 bits is 2·√Hamming), one cell."""
    labels = [source.get("label") for source in index.sources]
    labelled = all(isinstance(label, int | np.integer) and label >= 0 for label in labels)
    num_bits = index.tokenizer.num_bits

    def features(ids: np.ndarray) -> np.ndarray:
        tokens = index.tokens[ids].reshape(len(ids), -1).astype(np.int64)  # (T, h·w)
        planes = (tokens[..., None] >> np.arange(num_bits)) & 1  # (T, h·w, K)
        return (2.0 * planes - 1).reshape(len(ids), -1).astype(np.float32)

    return audit.TrainingPartitions(len(index), np.asarray(labels, dtype=np.int64) if labelled else None, features)


# ---------------------------------------------------------------------------------------------------- writing


def write_report(report: Report, out: str | Path) -> dict:
    """report.json, report.html, report.png and the pictures, written into a folder beside `out` that replaces `out`
    in one step (a kill or a full disk leaves the previous report; a full disk raises DiskFullError saying so).
    Returns report.json's content."""
    out = Path(out)
    _check_out(out)
    value = report.to_json()
    needed = sum(p.numel() for p in report.pictures.values()) + 3 * len(json.dumps(value)) + PLOT_BYTES
    kept = f"{out} is as it was (no new report was written); free space and run the same command"
    with explain_full_disk(out, needed, kept), atomic_directory(out) as folder:
        for name, picture in report.pictures.items():
            rendering.save_png(picture, folder / name)
        rendering.write_plots(value, folder)
        write_json_atomic(folder / "report.json", value)
    return value


def memorization_report(
    index: ImageIndex,
    generated: torch.Tensor,
    heldout: torch.Tensor,
    out: str | Path,
    percentile: float = 1.0,
    gallery_size: int = 8,
    generated_names: list[str] | None = None,
    tau: float | None = None,
    *,
    plant: int = 0,
    plant_seed: int = 0,
) -> dict:
    """`compute_report` then `write_report` into `out`; returns report.json's content. `out` is checked first, so a
    folder that holds other files is refused before anything is computed."""
    _check_out(Path(out))
    report = compute_report(
        index, generated, heldout, percentile, gallery_size, generated_names, tau, plant=plant, plant_seed=plant_seed
    )
    return write_report(report, out)


def _check_out(out: Path) -> None:
    """`out` is replaced as a whole: refuse a folder that holds anything but a report's files."""
    if out.is_file():
        raise ValueError(f"out: {out} is a file; give a folder for the report")
    others = sorted(p.name for p in out.iterdir() if not REPORT_FILE.match(p.name)) if out.is_dir() else []
    if others:
        raise ValueError(
            f"out: {out} holds other files than a report ({', '.join(others[:3])}...), which writing a report there "
            "would replace; choose a new folder"
        )


# ---------------------------------------------------------------------------------------------------- verdict


def verdict(report: dict) -> str:
    """One sentence over all metrics.

    A metric places the generations *closer* to the training set than held-out images when its C_T < −3 or it flags
    far more generations than the held-out percentile would (binomial p < 0.001). Closeness alone is not copying: a
    generator of smooth or blurry images is close in pixel distance (and LPIPS) to the smooth training images, without
    copying any of them. So the verdict says "Possible copying" only when the Hamming distance between bit tokens is
    among the metrics that find the generations closer, or when Carlini's relative criterion (a generation much
    closer to one training image than to its other near neighbours) flags far more generations than held-out images
    (p < 0.001) in a metric that finds them closer. When only pixel distance or LPIPS finds them closer, it says "No
    copy confirmed" and names which metric says what."""
    metrics = report["metrics"]
    closer = [
        m
        for m, d in metrics.items()
        if (d["c_t"] is not None and d["c_t"] < COPYING_C_T) or d["flagged_p_value"] < EXCESS_P_VALUE
    ]
    relative = [
        m
        for m in closer
        if (d := metrics[m]).get("relative_p_value") is not None and d["relative_p_value"] < EXCESS_P_VALUE
    ]
    tokens = [m for m in closer if REPORT_METRICS.get(m, ReportMetric(m)).bit_tokens]
    confirmed = closer if tokens else relative
    c_t = ", ".join(f"{d['c_t']:.1f} ({m})" for m, d in metrics.items() if d["c_t"] is not None) or "not computed"
    flagged = ", ".join(f"{100 * d['flagged_fraction']:.1f} % ({m})" for m, d in metrics.items())
    evidence = (
        f"C_T is {c_t} and {flagged} of generated images are closer than the "
        f"{rendering.ordinal(report['percentile'])} percentile of held-out images"
    )
    if confirmed:
        why = (
            f"a test on bit tokens agrees ({', '.join(tokens)})"
            if tokens
            else (
                "Carlini's relative criterion agrees ("
                + ", ".join(_relative_text(m, metrics[m]) for m in relative)
                + ")"
            )
        )
        return f"Possible copying by {', '.join(confirmed)}: {evidence}; {why}."
    if closer:
        hamming = (
            "no test on bit tokens does"
            if any(REPORT_METRICS.get(m, ReportMetric(m)).bit_tokens for m in metrics)
            else "the index has no Hamming metric to check"
        )
        return (
            f"No copy confirmed: {' and '.join(closer)} alone place{'s' if len(closer) == 1 else ''} the generations "
            f"closer to the training set than held-out images, which smooth or blurry samples also do; {hamming}, and "
            f"Carlini's relative criterion flags no more generations than held-out images: {evidence}."
        )
    return f"No sign of copying: {evidence}."


def _relative_text(metric: str, data: dict) -> str:
    return (
        f"{100 * data['relative_flagged_fraction']:.1f} % of generations against "
        f"{100 * data['heldout_relative_flagged_fraction']:.1f} % of held-out images by {metric}"
    )


# ---------------------------------------------------------------------------------------------------- input checks


def _check_images(images: torch.Tensor, name: str) -> None:
    if len(images) == 0:
        what = "generated images to audit" if name == "generated" else "held-out real images to calibrate against"
        raise ValueError(f"{name} is empty: the report needs {what}")
    if images.dim() != 4 or images.shape[1] != 3:
        raise ValueError(f"{name} must have shape (B, 3, S, S), got {tuple(images.shape)}")
    if not torch.isfinite(images).all():
        raise ValueError(f"{name} holds NaN or infinite pixels")


def _check_distances(distances: np.ndarray, name: str) -> None:
    if np.isnan(distances).any():
        raise ValueError(f"{name}: the search returned NaN distances; check the images and the index")


# ---------------------------------------------------------------------------------------------------- planted copies


def _planted(index: ImageIndex, ids: np.ndarray, controls: torch.Tensor, thresholds: dict[str, float], seed: int):
    """The planted copies' scores per metric, and a picture of the first planted image under every edit."""
    originals = load_indexed_images(index, ids).cpu()
    hosts = controls[np.arange(len(ids)) % len(controls)]
    copies = plant_module.plant_copies(originals, index.tokenizer, hosts, seed)
    near_controls, _ = _nearest(index, controls, k=1)
    near_copies = {name: _nearest(index, images, k=1)[0] for name, images in copies.items()}
    scores, copy_distances, real_distances = {}, {}, {}
    for metric, threshold in thresholds.items():
        real = near_controls[metric][1][:, 0]
        _check_distances(real, f"heldout ({metric} distances of the real images among the copies)")
        found = {name: near[metric][1][:, 0] for name, near in near_copies.items()}
        for name, distances in found.items():
            _check_distances(distances, f"plant ({metric} distances of the {name} copies)")
        scores[metric] = plant_module.planted_scores(found, real, threshold)
        copy_distances[metric], real_distances[metric] = found, real
    pictures = torch.stack([copies[name][0] for name in copies])
    result = PlantedReport(ids, len(controls), scores, copy_distances, real_distances)
    return result, image_grid(pictures, columns=len(pictures))


# ---------------------------------------------------------------------------------------------------- search


def _nearest(
    index: ImageIndex, images: torch.Tensor, k: int, batch_size: int = 64
) -> tuple[dict[str, tuple[np.ndarray, np.ndarray]], torch.Tensor]:
    """metric → (ids (Q, k), distances (Q, k) float64), and the images' token grids (Q, h, w), encoded once."""
    ids: dict[str, list] = {}
    distances: dict[str, list] = {}
    tokens = []
    for first in range(0, len(images), batch_size):
        batch = images[first : first + batch_size].to(index.device)
        batch_tokens = index.encode(batch)
        tokens.append(batch_tokens.cpu())
        found = {m: (f.ids, f.distances) for m, f in index.search(batch, tokens=batch_tokens, k=k).items()}
        for metric, extra in REPORT_METRICS.items():
            if extra.search is not None:
                found[metric] = extra.search(index, batch, batch_tokens, k)
        for metric, (found_ids, found_distances) in found.items():
            ids.setdefault(metric, []).append(np.asarray(found_ids))
            distances.setdefault(metric, []).append(np.asarray(found_distances, dtype=np.float64))
    found = {m: (np.concatenate(ids[m]), np.concatenate(distances[m])) for m in ids}
    return found, torch.cat(tokens)


def _auth_pct(
    index: ImageIndex, metric: str, distances: np.ndarray, matched: np.ndarray
) -> tuple[float | None, str | None]:
    """AuthPct from each matched training image's distance to its nearest other training image."""
    unique = np.unique(matched)
    if len(index) < 2:
        return None, "AuthPct not computed: the index holds a single image"
    if REPORT_METRICS.get(metric, ReportMetric(metric)).nearest_only:
        return None, f"AuthPct not computed: {NEAREST_ONLY}"
    try:
        extra = REPORT_METRICS.get(metric, ReportMetric(metric)).search
        if extra is not None:  # a metric of the report, not of the index: search with the images again
            images = load_indexed_images(index, unique)
            found_ids, found_distances = extra(index, images, index.encode(images.to(index.device)), 2)
        elif metric == "lpips" and index.sketch is not None:  # only sketches are stored: search with the images
            found = index.search(load_indexed_images(index, unique), k=2, metrics=["lpips"])["lpips"]
            found_distances, found_ids = found.distances, found.ids
        else:  # the stored vectors (packed codes, thumbnails, φ) are the queries
            vectors = np.stack([index.flat[metric].reconstruct(int(i)) for i in unique])
            found_distances, found_ids = index.flat[metric].search(vectors, 2)
    except IndexError_ as error:
        return None, f"AuthPct not computed: {error}"
    # the nearest *other* image: drop the image itself wherever it comes (an exact duplicate may come first)
    other = np.asarray(found_ids) != unique[:, None]
    nearest_other = np.asarray(found_distances, dtype=np.float64)[np.arange(len(unique)), other.argmax(1)]
    return audit.auth_pct(distances, matched, nearest_other[np.searchsorted(unique, matched)]), None


def _relative_flagged(index: ImageIndex, metric: str, distances: np.ndarray) -> tuple[float | None, str | None]:
    """Carlini's flagged fraction over each generation's K nearest distances (M, K); ℓ2, not squared, for pixels."""
    if len(index) < 2:
        return None, "relative distance not computed: the index holds fewer than 2 images"
    if REPORT_METRICS.get(metric, ReportMetric(metric)).nearest_only:
        return None, f"relative distance not computed: {NEAREST_ONLY}"
    if metric == "pixel":
        distances = np.sqrt(distances)
    try:
        return float(audit.relative_flagged(distances, neighbours=distances.shape[1]).mean()), None
    except ValueError as error:  # e.g. a compressed LPIPS index that found fewer neighbours than asked
        return None, f"relative distance not computed: {error}"


def _excess_p_value(flagged: int, total: int, rate: float) -> float:
    """P(at least `flagged` of `total` flags) if each generation were flagged at the held-out `rate`."""
    return float(binom.sf(flagged - 1, total, rate)) if flagged else 1.0


def _relative_p_value(generated: float | None, heldout: float | None, m: int, n: int) -> float | None:
    """Carlini's flags among M generations against their rate among N held-out images ((k + ½) / (N + 1), so that a
    rate of 0 seen in N images is not taken for certain)."""
    if generated is None or heldout is None:
        return None
    return _excess_p_value(round(generated * m), m, (heldout * n + 0.5) / (n + 1))


@torch.no_grad()
def _pairwise_distances(
    index: ImageIndex, metric: str, images: torch.Tensor, tokens: torch.Tensor, batch_size: int = 64
) -> np.ndarray:
    """(M, M) distances among the generated images, in the metric's units (for the cliques); None for a metric that
    gives no pairwise distances."""
    extra = REPORT_METRICS.get(metric, ReportMetric(metric))
    if extra.search is not None:
        return None if extra.pairwise is None else np.asarray(extra.pairwise(index, images, tokens), dtype=np.float64)
    if metric == "hamming":
        codes = bits.pack_bits(tokens, index.tokenizer.num_bits).numpy()
        rows = [
            np.bitwise_count(codes[i : i + batch_size, None] ^ codes[None]).sum(-1)
            for i in range(0, len(codes), batch_size)
        ]
        return np.concatenate(rows).astype(np.float64)
    if metric == "lpips":
        features = torch.cat(
            [index.lpips(images[i : i + batch_size].to(index.device)).cpu() for i in range(0, len(images), batch_size)]
        )
    else:
        features = torch.from_numpy(pixel_features(images))
    features = features.double()
    squared = features.pow(2).sum(1)
    return (squared[:, None] + squared[None] - 2 * features @ features.T).clamp(min=0).numpy()


# ---------------------------------------------------------------------------------------------------- pictures


def _summary(values: np.ndarray) -> dict[str, float]:
    return {
        "mean": float(values.mean()),
        "median": float(np.median(values)),
        "min": float(values.min()),
        "p1": float(np.percentile(values, 1)),
        "p5": float(np.percentile(values, 5)),
    }


def _gallery(index, generated, ids, distances, size) -> torch.Tensor:
    """Rows of (generated, nearest training image) for the closest pairs, as one image (3, H, W)."""
    order = np.argsort(distances)[:size]
    pairs = []
    for i in order:
        thumb = torch.from_numpy(index.thumbnails[ids[i]]).permute(2, 0, 1).float() / 255
        image = torch.nn.functional.interpolate(generated[i : i + 1], size=thumb.shape[-2:], mode="area")[0]
        pairs += [image, thumb]
    return image_grid(torch.stack(pairs), columns=2)
