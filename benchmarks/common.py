"""What every benchmark records beside its figures: load, code version, command."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
DOC = ROOT / "docs" / "benchmarks.md"


def load_average() -> str:
    """The 1-minute load average: other work on the machine skews every figure."""
    try:
        return f"{os.getloadavg()[0]:.2f}"
    except OSError:
        return "unknown"


def potluck_source() -> str:
    """Where `potluck` was imported from, its git commit, and whether its files differ."""
    import potluck

    folder = Path(potluck.__file__).resolve().parent

    def git(*words: str) -> str:
        out = subprocess.run(
            ["git", "-C", str(folder), *words], check=True, capture_output=True, text=True
        )
        return out.stdout.strip()

    try:
        commit = git("rev-parse", "--short", "HEAD")
        if git("status", "--porcelain", "--", "."):
            commit += ", with uncommitted changes in potluck/"
    except (OSError, subprocess.CalledProcessError):
        commit = "not a git checkout"
    return f"{folder} ({commit})"


def command_line(command: str, script: str) -> str:
    """The command that ran `script`, as `command` when run from the repository's root."""
    exe = Path(sys.executable)
    if Path.cwd().resolve() == ROOT and exe.absolute().parent.parent == ROOT / ".venv":
        words = [command]
    else:
        words = [f"cd {Path.cwd()} &&", str(exe), str(Path(script).resolve())]
    if path := os.environ.get("PYTHONPATH"):  # e.g. a snapshot of potluck to import instead
        words.insert(-2, f"PYTHONPATH={path}")
    return " ".join([*words, *sys.argv[1:]])


def append_to_doc(section: str) -> None:
    """Append a section to docs/benchmarks.md (created with its title if missing)."""
    DOC.parent.mkdir(parents=True, exist_ok=True)
    existing = DOC.read_text() if DOC.exists() else "# Benchmarks\n"
    DOC.write_text(existing.rstrip("\n") + "\n\n" + section)
    print(f"\nappended to {DOC.relative_to(ROOT)}")
