"""The explorer as users meet it: start-up time, latency of each action, 8 concurrent clients, screenshots.

    .venv/bin/python -m bench.app_speed [--port 7870] [--screenshots docs/screenshots] [-- app options]

Starts `python -m app` (the bundled model unless app options say otherwise) as a subprocess, measures the seconds
until it answers HTTP, waits for its index, times every API action through gradio_client (median of --repeat
runs), runs 8 clients generating at once, and, with --screenshots, saves a Chromium screenshot of every tab.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import subprocess
import sys
import time
import urllib.request
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent


def wait_http(url: str, process: subprocess.Popen, timeout: float) -> float:
    started = time.time()
    while time.time() - started < timeout:
        if process.poll() is not None:
            raise RuntimeError(f"the app exited with {process.returncode}")
        try:
            urllib.request.urlopen(url, timeout=2)
            return time.time() - started
        except OSError:
            time.sleep(0.2)
    raise TimeoutError("the app did not answer")


def timed(fn, repeat: int) -> float:
    times = []
    for _ in range(repeat):
        started = time.time()
        fn()
        times.append(time.time() - started)
    return statistics.median(times)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--port", type=int, default=7870)
    parser.add_argument("--repeat", type=int, default=3)
    parser.add_argument("--screenshots", type=Path)
    parser.add_argument("--compare-with", default="default-vq", help="the second tokenizer of compare_flips")
    parser.add_argument("app_args", nargs="*")
    args = parser.parse_args()
    from gradio_client import Client, handle_file

    url = f"http://127.0.0.1:{args.port}/"
    env = {**os.environ, "GRADIO_ANALYTICS_ENABLED": "False"}
    started = time.time()
    process = subprocess.Popen(
        [sys.executable, "-m", "app", "--port", str(args.port), *args.app_args], cwd=ROOT, env=env,
        stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
    )  # fmt: skip
    try:
        startup = wait_http(url, process, 300)
        client = Client(url, verbose=False)
        while (status := client.predict(api_name="/index_status")).startswith("⏳") or not status:
            time.sleep(1)
        index_ready = time.time() - started
        info = client.predict(api_name="/model_info")
        classes = ["circle"] if info.get("classes") == 10 else ["tench"]
        knobs = [16, 4.0, "none", 1.0, 2.0, 1.0, "arccos"]  # the bundled model's own sampling
        gallery = client.predict(classes, 4, 0, *knobs, api_name="/generate")[0]
        image = handle_file(gallery[0]["image"])
        compare = args.compare_with
        actions = {
            "generate 1 image": lambda: client.predict(classes, 1, 0, *knobs, api_name="/generate"),
            "generate 4 images": lambda: client.predict(classes, 4, 0, *knobs, api_name="/generate"),
            "flip_bits (every bit, all tokens)": lambda: client.predict(image, "all", "all", api_name="/flip_bits"),
            "token_map": lambda: client.predict(image, api_name="/token_map"),
            "bit_walk (8 steps)": lambda: client.predict(image, 8, 8, 0, api_name="/bit_walk"),
            "neighbours (k=8)": lambda: client.predict(image, 8, api_name="/neighbours"),
            "token_space": lambda: client.predict(api_name="/token_space"),
            "code_atlas": lambda: client.predict(api_name="/code_atlas"),
            f"compare_flips with {compare} (every bit, all tokens)": lambda: client.predict(
                image, compare, "all", "all", api_name="/compare_flips"
            ),
            f"compare_flips with {compare} (every bit, 4 tokens)": lambda: client.predict(
                image, compare, "all", "0, 17, 34, 51", api_name="/compare_flips"
            ),
            "train_status": lambda: client.predict(api_name="/train_status"),
        }
        latency = {name: timed(fn, args.repeat) for name, fn in actions.items()}

        def one(seed):
            t = time.time()
            Client(url, verbose=False).predict(classes, 2, seed, *knobs, api_name="/generate")
            return time.time() - t

        t = time.time()
        with ThreadPoolExecutor(8) as pool:
            per_client = list(pool.map(one, range(8)))
        concurrent = {"clients": 8, "wall_s": time.time() - t, "slowest_s": max(per_client), "errors": 0}
        result = {
            "machine": f"{platform.machine()}, {os.cpu_count()} cores, {platform.platform()}",
            "date": time.strftime("%Y-%m-%d"),
            "app_args": args.app_args,
            "startup_to_http_s": round(startup, 2),
            "startup_to_index_ready_s": round(index_ready, 1),
            "latency_median_s": {k: round(v, 3) for k, v in latency.items()},
            "concurrent_generate": {k: round(v, 2) if isinstance(v, float) else v for k, v in concurrent.items()},
        }
        print(json.dumps(result, indent=2), flush=True)
        if args.screenshots:
            screenshots(url, args.screenshots, compare)
    finally:
        process.terminate()
        process.wait(30)


def screenshots(url: str, folder: Path, compare: str) -> None:
    from playwright.sync_api import expect, sync_playwright

    expect.set_options(timeout=300_000)

    folder.mkdir(parents=True, exist_ok=True)
    with sync_playwright() as playwright:
        browser = playwright.chromium.launch(
            executable_path="/usr/bin/chromium",
            headless=True,
            args=["--no-sandbox", "--disable-gpu", "--disable-background-networking", "--disable-component-update"],
        )
        page = browser.new_page(viewport={"width": 1400, "height": 1000})
        page.set_default_timeout(300_000)
        page.goto(url)
        page.get_by_role("tab", name="Generate", exact=True).click()
        page.get_by_role("button", name="Generate", exact=True).click()
        expect(page.locator("#generated-gallery img")).to_have_count(4)
        expect(page.get_by_text("masked fraction after each step")).to_be_visible()  # plotly draws after the gallery
        page.screenshot(path=folder / "generate.png", full_page=True)
        page.get_by_role("button", name="Send to bit flips").click()
        page.get_by_role("button", name="Flip each bit").click()
        expect(page.locator("#flipped-gallery img")).not_to_have_count(0)
        page.get_by_text("Bit planes and token map").click()
        page.get_by_role("button", name="Show bit planes").click()
        expect(page.locator("#planes-gallery img")).not_to_have_count(0)
        page.get_by_text("Random walk in Hamming space").click()
        page.get_by_role("button", name="Walk", exact=True).click()
        expect(page.locator("#walk-gallery img")).not_to_have_count(0)
        page.screenshot(path=folder / "bit-flips.png", full_page=True)
        chooser = page.get_by_label("tokenizer to compare with (its bits flipped at the same tokens)")
        chooser.fill(compare)
        chooser.press("Enter")
        page.locator("#compare-button").click()
        expect(page.locator("#compare-other img")).not_to_have_count(0)
        expect(page.locator("#compare-psnr .js-plotly-plot")).to_be_visible()
        page.locator("#compare-section").screenshot(path=folder / "bit-flips-lfq-vs-vq.png")
        page.get_by_role("tab", name="Generate", exact=True).click()
        page.get_by_role("button", name="Send to neighbours").click()
        page.get_by_role("button", name="Find neighbours").click()
        expect(page.locator("#verdict")).to_contain_text("threshold")
        page.get_by_text("Memorization report over generated images").click()
        page.locator("#report-plant input[type=number]").fill("10")
        page.locator("#report-plant input[type=number]").press("Enter")
        page.get_by_role("button", name="Run report").click()
        expect(page.locator("#report-text")).to_contain_text("Planted copies")
        page.locator("#report-flagged").scroll_into_view_if_needed()  # galleries load their images when in view
        page.mouse.wheel(0, 10_000)
        loaded = "() => [...document.querySelectorAll('.thumbnail-item img')].every(i => i.complete && i.naturalWidth)"
        page.wait_for_function(loaded)
        page.screenshot(path=folder / "neighbours.png", full_page=True)
        page.get_by_role("tab", name="Token space", exact=True).click()
        page.get_by_role("button", name="Compute").click()
        expect(page.locator("#umap-plot .js-plotly-plot")).to_be_visible()
        page.locator("#atlas-button").click()
        expect(page.locator("#atlas img")).to_be_visible()
        page.screenshot(path=folder / "token-space.png", full_page=True)
        page.get_by_role("tab", name="Training", exact=True).click()
        name = f"screenshot-{int(time.time())}"  # a tiny run in the workspace, for its curves and samples
        page.get_by_label("job name").fill(name)
        overrides = page.get_by_label("overrides, one key=value per line (e.g. training.max_steps=200)")
        overrides.fill("training.max_steps=40\ntraining.sample_every=5")
        page.get_by_role("button", name="Launch").click()
        expect(page.locator("#job-table div[role=row]", has_text=name)).to_contain_text("finished")
        page.wait_for_timeout(3000)  # the 2-s timer draws the last curves and samples
        page.screenshot(path=folder / "training.png", full_page=True)
        browser.close()


if __name__ == "__main__":
    main()
