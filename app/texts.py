"""The words and styles of the page: each tab's one-paragraph introduction, the CSS, and the UMAP click handler."""

GENERATE = (
    "**The paper's claim:** a masked transformer can generate images directly in bit tokens, with no embedding "
    "table (MaskBit, Sec. 3). Every step predicts each masked group of bits and keeps the most confident "
    "predictions. Watch the unmasking below (grey: still masked, half grey: one group of a token decided), and "
    "send an image to the other tabs."
)
FLIPS = (
    "**The claim (Fig. 3):** flip one bit of every token of a lookup-free (bit) tokenizer and the image keeps its "
    "content, while colours and details change, because bit k of a token is the sign of latent channel k. "
    "Flip each bit and compare the PSNR and the difference maps (black: unchanged; each map is scaled to its own "
    "largest change, by the gain its caption gives). Then *compare with* the VQ twin: "
    "a vector-quantised tokenizer's index bits only number codebook entries."
)
NEIGHBOURS = (
    "**The check (App. G):** is a generated image a copy of a training image? It is compared with its nearest "
    "indexed training images by Hamming distance between tokens, by LPIPS and by pixels. The verdict flags an "
    "image that is closer to a training image than 99 % of held-out real images are to theirs. The same search "
    "tests the paper's second claim (below the results): do Hamming distances between bit tokens find the images "
    "that look alike?"
)
TOKENS = (
    "**What this shows:** how the tokenizer uses its bits and codes over the indexed images. The UMAP places whole "
    "images by all their tokens at once, which mostly encode where the shape is and its colours, so the classes "
    "mix there: that says little about single tokens. Token-level structure shows in *Bit flips* and in the code "
    "atlas below, where codes one bit apart sit side by side."
)
ATLAS = (
    "Every code decoded as a uniform patch, in Gray-code order: neighbouring cells differ in exactly one bit. A "
    "lookup-free tokenizer's atlas changes smoothly; a vector-quantised one's looks like noise."
)
JUDGE = (
    "**The judge** is a small CNN trained on real images of the procedural shapes (`data/judge.py`); it names the "
    "right shape for 100 % of the real test images and of both tokenizers' reconstructions, so *another class* here "
    "means the flip changed the shape it sees. Coloured noise is no shape: for an image far from every shape it "
    "learnt (noise, half-noise blends; none of 1,000 real test images) it says *none of these*, a bar below the line. "
    "It knows the 64-px shapes only."
)
TRAINING = (
    "**What this does:** train a tokenizer (Stage I) or a generator (Stage II) as a separate process "
    "(`accelerate launch -m train`), watch its losses and samples, stop and resume it, and load a finished model "
    "into the explorer. The `tiny` recipes finish in seconds; `default` is how the bundled pair was trained."
)
TRAINING_OFF = (
    "Training is disabled on this server: it is exposed and was not started with `--enable-training --auth "
    "user:password`."
)

CSS = """
.pixelated img, img.pixelated { image-rendering: pixelated; }
/* 32-64 px images: scale them up to the component instead of showing them at their size */
.pixelated .image-frame { width: 100% !important; }
.pixelated img { object-fit: contain !important; }
#token-grid img { image-rendering: pixelated; cursor: crosshair; }
.intro { opacity: 0.85; }
/* Galleries fit their column: Gradio gives each thumbnail at least 100 px (8 neighbours in a 800-px column scroll
   sideways) and lays the caption over the image on one line, cut with an ellipsis. Here columns share the width, and
   the caption sits under its image, wrapped, so the distances it reports are always readable. */
.grid-container { grid-template-columns: repeat(var(--grid-cols), minmax(0, 1fr)) !important;
                  grid-template-rows: none !important; grid-auto-rows: auto !important; }
.thumbnail-item.thumbnail-lg { aspect-ratio: auto !important; height: auto !important;
                               display: flex; flex-direction: column; }
.thumbnail-item.thumbnail-lg > img { height: auto !important; }
.grid-wrap:not(.minimal) { padding-top: 30px !important; }  /* the gallery's label sits over its first row otherwise */
/* the same for pictures that are grids or figures: the label and buttons above the picture, not over its first row */
#unmasking .image-container, #report-image .image-container, #atlas .image-container,
#train-sample .image-container { padding-top: 30px; }
/* a few flagged pairs: Gradio gives a gallery as few columns as it has images, each pair half the page wide */
#report-flagged .grid-container { grid-template-columns: repeat(auto-fill, 240px) !important; }
.thumbnail-item .caption-label { position: static !important; max-width: 100% !important;
                                 white-space: normal !important; overflow-wrap: anywhere;
                                 text-overflow: clip !important; border: none !important; border-radius: 0 !important; }
"""

# gr.Plot has no click event: clicking a point of the token-space UMAP fills "index id" with the point's id and
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
