"""README.md's results tables are generated from assets/*.json and must match them."""

import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]


def test_readme_results_match_json():
    proc = subprocess.run(
        [sys.executable, "benchmarks/update_readme.py", "--check"],
        cwd=ROOT,
        capture_output=True,
        text=True,
    )
    assert proc.returncode == 0, (
        "README.md's results block differs from assets/*.json "
        "(run `python benchmarks/update_readme.py`):\n" + proc.stdout + proc.stderr
    )
