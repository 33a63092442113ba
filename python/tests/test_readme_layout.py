"""README.md's "Layout" table and CLI summary must stay true: every module, doc, benchmark and
example of the repository is named there, every file named there exists, and every
``vantix-pack`` subcommand appears in the packer's summary."""

import re
from pathlib import Path

from conftest import run_cli

ROOT = Path(__file__).resolve().parents[2]

#: What a newcomer must find in the layout table: (folder, glob) of every file that is a module,
#: a doc, a benchmark or an example. Each is named by its path relative to the folder.
LISTED = [
    ("vantix-read/src", "**/*.rs"),
    ("vantix-read/examples", "*.rs"),
    ("vantix-read/tests", "*.rs"),
    ("vantix-pack/src", "**/*.rs"),
    ("vantix-pack/examples", "*.rs"),
    ("python/src", "*.rs"),
    ("python/vantix", "*.py"),
    ("docs", "*.md"),
    ("benchmarks", "*.py"),
    ("examples", "*.py"),
    ("fuzz/fuzz_targets", "*.rs"),
]


def section(text: str, heading: str) -> str:
    """The body of the ``## heading`` section of a Markdown text."""
    start = text.index(f"\n## {heading}\n")
    end = text.find("\n## ", start + 1)
    return text[start : end if end >= 0 else len(text)]


def code_spans(text: str) -> set[str]:
    return set(re.findall(r"`([^`\n]+)`", text))


def test_layout_names_every_module_doc_benchmark_and_example():
    layout = section((ROOT / "README.md").read_text(), "Layout")
    named = code_spans(layout)
    missing = []
    for folder, pattern in LISTED:
        for file in sorted((ROOT / folder).glob(pattern)):
            rel = file.relative_to(ROOT / folder).as_posix()
            if rel not in named and file.name not in named:
                missing.append(f"{folder}/{rel}")
    assert not missing, f"README.md's Layout table does not name: {missing}"


def test_layout_names_only_files_that_exist():
    layout = section((ROOT / "README.md").read_text(), "Layout")
    existing = set()
    for folder, pattern in LISTED:
        for file in (ROOT / folder).glob(pattern):
            existing.add(file.relative_to(ROOT / folder).as_posix())
            existing.add(file.name)
    stale = sorted(
        name
        for name in code_spans(layout)
        if re.fullmatch(r"[\w/.-]+\.(rs|py|md)", name)
        and name not in existing
        and not (ROOT / name).exists()
    )
    assert not stale, f"README.md's Layout table names files that do not exist: {stale}"


def test_packer_summary_names_every_subcommand():
    usage = run_cli("--help").stdout
    commands = re.search(r"Commands:\n(.*?)\n\n", usage, re.S)
    assert commands, usage
    names = [line.split()[0] for line in commands.group(1).splitlines() if line.strip()]
    names = [n for n in names if n != "help"]
    assert names, usage
    packer = section((ROOT / "README.md").read_text(), "The packer: `vantix-pack`")
    absent = [n for n in names if f"vantix-pack {n} " not in packer]
    assert not absent, f"README.md's packer summary omits subcommands: {absent}"
