"""The Neighbours and Token space tabs' endpoints: nearest training images, memorization verdicts and reports,
token statistics and the UMAP of the indexed images (see app/explore.py for the conventions)."""

from __future__ import annotations

import shutil
import tempfile
from pathlib import Path

import gradio as gr
import numpy as np
import torch

from app import figures, pictures
from app.endpoint import Endpoints, gpu, guarded
from app.validation import LIMITS, UserError, checked_seed, whole_number
from maskbit import analysis

__all__ = ["SearchCallbacks"]


class SearchCallbacks(Endpoints):
    """Neighbours and Token space (they share the explorer's image input and model state)."""

    # ------------------------------------------------------------------------------------------------ neighbours

    def _thumbnail(self, index, i: int) -> np.ndarray:
        if self.settings.dataset_images_visible:
            return index.thumbnails[i]
        return np.full_like(index.thumbnails[i], 160)  # hidden: a grey square

    @gpu
    @guarded
    def neighbours(self, image, k):
        """The k nearest indexed images by each metric, their overlap, and the memorization verdicts."""
        from indexes.neighbours import find_neighbours, union_distances

        index = self.state.require_index()
        picture = self._image(image, index.image_size)
        k = whole_number(k, "k", 1, LIMITS.k)
        result = find_neighbours(index, picture[None], k=k)[0]
        vq = index.tokenizer_kind == "vq"
        galleries = {
            metric: [(self._thumbnail(index, row.id), _caption(row, vq)) for row in rows]
            for metric, rows in result.rows.items()
        }
        exact = union_distances(index, picture, result)
        other = "lpips" if "lpips" in exact else "pixel"
        scatter = figures.neighbour_scatter(
            exact["hamming"],
            exact[other],
            _metric_name("hamming", index),
            _metric_name(other, index),
            [index.sources[int(i)]["source"] for i in exact["ids"]],
        )
        nearest = result.rows["hamming"][0]
        heat = figures.hamming_map(
            nearest.token_distance_map,
            index.tokenizer.num_bits,
            f"differing bits per token, nearest by Hamming (id {nearest.id})",
        )
        return (
            galleries.get("hamming", []),
            gr.update(value=galleries["lpips"], visible=True) if "lpips" in galleries else gr.update(visible=False),
            galleries.get("pixel", []),
            _verdict_text(result, k, index),
            scatter,
            heat,
            result.to_json(),
        )

    def neighbours_cleared(self):
        """The Neighbours tab's results emptied: its query changed, they belong to the previous one."""
        return [], gr.update(value=[]), [], "", None, None, None, CLAIM_REFERENCE

    def second_claim(self, found: dict | None) -> str:
        """The paper's second claim for one query: do its Hamming neighbours (bit tokens) find the images its pixel
        (and LPIPS) neighbours find? overlap@k = |H_k ∩ P_k| / k, against what k random images share (k / N)."""
        index = self.state.index
        if not found or not found.get("overlap") or index is None:
            return CLAIM_REFERENCE
        k = len(found.get("hamming", []))
        lines = [
            f"- Hamming ∩ {pair.split('∩')[1]}: **{round(value * k)} of {k}** (overlap@{k} = {value:.2f})"
            for pair, value in found["overlap"].items()
            if pair.startswith("hamming∩")
        ]
        chance = k / max(1, len(index))
        return (
            f"For this query, its top-{k} by Hamming distance against its top-{k} by the other metrics:\n"
            + "\n".join(lines)
            + f"\n\nk random images of the {len(index)} indexed would share {chance:.2g} (k / N) on average. "
            + CLAIM_REFERENCE
        )

    @gpu
    @guarded
    def memorization_report(self, count, seed, plant=0):
        """Generate `count` images and compare their nearest training distances with held-out real images'; with
        `plant` > 0 also plant that many training images as copies under every edit of `indexes.plant` among
        held-out images that did not set the threshold, and measure each metric's recall on them."""
        from indexes.report import memorization_report as report
        from indexes.report import report_inputs, summary

        index = self.state.require_index()
        models = self.state.models
        if not models.can_generate:
            raise UserError(models.why_not)
        count = whole_number(count, "count (generated images)", *LIMITS.report_images)
        seed = checked_seed(seed)
        plant = whole_number(
            plant, "plant (planted copies)", LIMITS.report_plant[0], min(LIMITS.report_plant[1], len(index))
        )
        # the CLI's recipe: the user's seed generates and plants; the held-out images are the index dataset's, as
        # many as set the Neighbours tab's thresholds
        inputs = report_inputs(
            index,
            count,
            seed,
            plant,
            generator=models.generator,
            sampling=models.sampling,
            heldout_dataset=None if index.dataset else self.settings.index_dataset,
        )
        images = inputs.generated
        with tempfile.TemporaryDirectory(prefix="maskbit-report-") as out:  # the figure is kept, the rest removed
            data = report(
                index, images, inputs.heldout, Path(out), generated_names=inputs.names, plant=plant, plant_seed=seed
            )
            figure = shutil.copyfile(Path(out) / "report.png", self.state.files.path("report.png"))
        flagged = self._flagged_pairs(index, images, data)
        return str(figure), _report_text(data), gr.update(value=flagged, visible=bool(flagged)), summary(data)

    def _flagged_pairs(self, index, images: torch.Tensor, data: dict, per_metric: int = 8) -> list:
        """The flagged generated images (closest first, `per_metric` per metric), each beside the training image
        it is closest to, at the index's thumbnail size."""
        pairs = []
        for metric, d in data["metrics"].items():
            for flag in d["flagged"][:per_metric]:
                i = flag["generated_position"]
                thumbnail = self._thumbnail(index, flag["nearest_id"])
                size = thumbnail.shape[:2]
                generated = torch.nn.functional.interpolate(images[i : i + 1], size=size, mode="area")[0]
                gap = np.full((size[0], 1, 3), 255, np.uint8)
                picture = np.concatenate([pictures.to_array(generated), gap, thumbnail], axis=1)
                caption = f"{metric} {flag['distance']:.4g}: generated #{i} | {flag['nearest']}"
                pairs.append((picture, caption))
        return pairs

    # ------------------------------------------------------------------------------------------------ token space

    @guarded
    def token_space(self):
        """Per-bit usage and entropy, code usage, and the UMAP of the indexed images' tokens."""
        index = self.state.require_index()
        stats = analysis.token_statistics(index.tokens, index.tokenizer.num_bits)
        projection = self.state.projection
        if projection is None:
            umap = figures.empty("the UMAP is being computed in the background; press Compute again in a moment")
        else:
            labels = [s["label"] for s in index.sources[: len(projection)]]
            umap = figures.umap(projection, labels, list(index.classes))
        data = {
            "images": stats.images,
            "codes_used": stats.codes_used,
            "code_usage": stats.code_usage,
            "code_entropy_bits": stats.code_entropy,
            "perplexity": stats.perplexity,
            "bit_usage": stats.bit_usage.round(4).tolist(),
            "bit_entropy": stats.bit_entropy.round(4).tolist(),
        }
        return (
            figures.bit_usage(stats.bit_usage, stats.bit_entropy, stats.images),
            figures.code_usage(stats.code_counts, stats.codes_used, 2**stats.num_bits, stats.perplexity),
            umap,
            data,
        )

    @guarded
    def indexed_image(self, index_id):
        """The indexed image with this id (a point of the UMAP)."""
        index, index_id = self._shown_id(index_id)
        return index.thumbnails[index_id], _source_caption(index, index_id)

    # ------------------------------------------------------------------------------------------------ queries

    @guarded
    def training_image(self, index_id):
        """The indexed training image with this id, read from its source at the index's image size, as a query: the
        Neighbours tab's picker (its nearest neighbour is itself, at distance 0)."""
        from indexes.sources import load_indexed_images

        index, index_id = self._shown_id(index_id)
        image = load_indexed_images(index, [index_id])[0]
        return self._png(image, f"training-{index_id}"), _source_caption(index, index_id)

    def training_image_to_neighbours(self, index_id):
        """Token space's "Send to neighbours": `training_image` in both tabs (the Neighbours tab opened)."""
        path, caption = self.training_image(index_id)
        return path, caption, path, caption, gr.update(selected="neighbours")

    @guarded
    def image_to_neighbours(self, image):
        """Bit flips' "Send to neighbours": its image (Gradio's unread file payload, or a path) as the query, checked
        here so that a file that is no image is refused beside the button; the Neighbours tab opened."""
        self._image(image)
        path = image.get("path") if isinstance(image, dict) else image
        return str(path), "", gr.update(selected="neighbours")

    def _shown_id(self, index_id):
        """(index, id) for an index id whose image may be shown on this server."""
        index = self.state.require_index()
        index_id = whole_number(index_id, "index_id", 0, len(index) - 1)
        if not self.settings.dataset_images_visible:
            raise UserError("training-set images are not shown on this server (the deployer can turn them on)")
        return index, index_id


# ---------------------------------------------------------------------------------------------------- text


CLAIM_REFERENCE = (
    "Over 500 held-out queries of the procedural dataset (`bench/neighbours.py`, bench/README.md, section "
    '"Hamming neighbours against pixel neighbours"): the bundled LFQ tokenizer\'s Hamming top-10 share 25 % with '
    "the pixel top-10 (chance: 0.1 %) and close 85 % of the pixel gap between random images and the pixel top-10; "
    "its VQ twin's share 10 %. Hamming neighbours look alike, but are mostly not the nearest images in pixels."
)


def _source_caption(index, index_id: int) -> str:
    source, classes = index.sources[index_id], index.classes
    name = classes[source["label"]] if 0 <= source["label"] < len(classes) else source["label"]
    return f"id {index_id}: {source['source']} ({name})"


def _metric_name(metric: str, index) -> str:
    if metric == "hamming":
        return "Hamming distance between index bits" if index.tokenizer_kind == "vq" else "Hamming distance (bits)"
    from indexes.report import REPORT_METRICS

    return REPORT_METRICS[metric].label


def _caption(row, vq: bool) -> str:
    """A neighbour's class and distance; for a VQ tokenizer's Hamming neighbours also the share of equal tokens."""
    same = f" · {row.same_tokens:.0%} same tokens" if vq and row.same_tokens is not None else ""
    return f"{row.class_name} · {row.distance:.4g}{same}"


def _verdict_text(result, k: int, index) -> str:
    lines = []
    for metric, verdict in result.verdicts.items():
        name = _metric_name(metric, index)
        if verdict.threshold is None:
            lines.append(f"- **{name}**: nearest {verdict.nearest_distance:.4g} (no calibrated threshold)")
            continue
        flag = "⚠️ closer than held-out real images: possible memorization" if verdict.memorized else "✅ not memorized"
        lines.append(
            f"- **{name}**: nearest {verdict.nearest_distance:.4g}, threshold {verdict.threshold:.4g} "
            f"(p{verdict.percentile:g} of held-out real images) → {flag}"
        )
    if index.tokenizer_kind == "vq":
        nearest = result.rows["hamming"][0]
        lines.append(
            f"- the nearest by index bits has the same token as the query at {nearest.same_tokens:.0%} of positions"
        )
    overlap = ", ".join(f"{pair}: {value:.0%}" for pair, value in result.overlap.items())
    return "\n".join(lines) + f"\n\ntop-{k} overlap between metrics: {overlap}"  # LPIPS's note: in its gallery's place


def _report_text(data: dict) -> str:
    """The report's verdict, then per metric C_T (Meehan et al. 2020) and the flagged share against chance."""
    from indexes.rendering import c_t_text, planted_markdown
    from indexes.report import EXCESS_P_VALUE

    p, count, heldout = data["percentile"], data["generated_images"], data["heldout_images"]
    lines = [
        f"**{data['verdict']}**",
        "",
        "Why pixel distance or LPIPS alone never makes a copy: smooth or simple samples sit close to many smooth "
        "training images in pixels and in LPIPS without copying any one of them; a copy keeps its tokens, so the "
        "verdict asks the Hamming distance between bit tokens, or Carlini's relative criterion (much closer to one "
        "training image than to its other neighbours), to agree.",
        "",
    ]
    if "planted" in data:
        lines[-1:-1] = [
            "With planted copies, the held-out images are split: half set the thresholds, half are the real images "
            "the copies hide among; so thresholds and flagged shares differ a little from a report without them.",
            "",
        ]
    for metric, d in data["metrics"].items():
        ratio = d["flagged_fraction"] / (p / 100) if p else float("nan")
        c_t = c_t_text(d, count, heldout)
        if d["c_t"] is not None:
            c_t += " (below −3: copying; above +3: underfitting)"
        chance = "more than chance" if d["flagged_p_value"] < EXCESS_P_VALUE else "within chance"
        lines.append(
            f"- **{metric}**: {c_t}; {d['flagged_fraction']:.1%} of "
            f"{count} generated images are closer to a training image than the threshold {d['threshold']:.4g}; by "
            f"construction {p:g} % of held-out real images are, so this is {ratio:.1f}× what chance gives "
            f"(binomial p = {d['flagged_p_value']:.2g}: {chance}, the verdict asks for p < {EXCESS_P_VALUE:g}; "
            f"median nearest distance: generated {d['generated']['median']:.4g}, held-out {d['heldout']['median']:.4g})"
        )
    if "planted" in data:
        planted = data["planted"]
        lines += [
            f"\n**Planted copies**: {planted['count']} training images, each under every edit, among "
            f"{planted['controls']} held-out real images that did not set the threshold. Recall at the threshold "
            "(ROC AUC: 1 = every copy closer than every real image, 0.5 = no better than chance):",
            "",
            planted_markdown(planted),
        ]
    return "\n".join(lines)
