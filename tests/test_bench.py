"""The benchmark scripts run end to end at a tiny size, so that they do not rot between their real runs."""

import json
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).parents[1]
TINY = ROOT / "tests" / "fixtures" / "official-tiny" / "tiny_tokenizer.bin"


def test_bit_flips_writes_its_tables_and_plots(tmp_path):
    command = [sys.executable, "-m", "bench.bit_flips", "--tokenizers", str(TINY), str(TINY), "--images", "3"]
    command += ["--lpips", "off", "--no-atlas", "--out", str(tmp_path)]
    result = subprocess.run(command, cwd=ROOT, capture_output=True, text=True)
    assert result.returncode == 0, result.stderr[-3000:]
    report = json.loads((tmp_path / "bit_flips.json").read_text())
    assert report["images"] == 3 and report["judge"] is None  # 32 px images: the judge knows 64 px shapes only
    tokenizer = report["tokenizers"][0]
    assert set(tokenizer["flips"]) == {"all", "1", "4", "16"} and len(tokenizer["flips"]["all"]["per_bit"]) == 12
    assert report["tokenizers"][0]["flips"] == report["tokenizers"][1]["flips"]  # the same tokenizer twice
    one_token, every_token = tokenizer["flips"]["1"]["overall"], tokenizer["flips"]["all"]["overall"]
    assert one_token["l2"] < every_token["l2"]  # flipping one token moves an image less than flipping all 64
    for name in ("bit_flips.md", "bit_flips.png", "bit_flips_examples.png"):
        assert (tmp_path / name).stat().st_size > 0
