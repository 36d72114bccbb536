"""Check checkpoints against their manifests.

    python -m megaproc.checkpoint verify DIR [--sizes]

``DIR`` is one checkpoint (``RUN/checkpoints/step_XXXXXXXX``), or a run directory or its
``checkpoints/`` directory (every complete checkpoint in it).  Each file's size and content
hash (sizes only with ``--sizes``) is compared with ``manifest.json``, and the trainer state
must parse.  Prints one ``OK`` or ``FAILED`` line per checkpoint (and one line per bad file);
exits 0 iff every file of every checkpoint matches, 1 when one does not (or a checkpoint has no
manifest to check against), 2 when ``DIR`` holds no complete checkpoint.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from tqdm import tqdm

from megaproc.checkpoint.checkpointer import checkpoint_problems
from megaproc.checkpoint.layout import COMPLETE_MARKER, ResumeError, complete_checkpoints
from megaproc.checkpoint.manifest import MANIFEST_FILE, ManifestError, read_manifest
from megaproc.errors import run_cli

PROG = "megaproc.checkpoint"


def checkpoints_in(directory: Path) -> list[Path]:
    """The checkpoints ``directory`` names: itself, or the complete ones of a run."""
    if (directory / COMPLETE_MARKER).is_file():
        return [directory]
    root = directory / "checkpoints" if (directory / "checkpoints").is_dir() else directory
    found = [path for _, path in complete_checkpoints(root)]
    if not found:
        raise ResumeError(f"{directory} is not a complete checkpoint (no {COMPLETE_MARKER}) "
                          "and holds none")
    return found


def verify_one(path: Path, hashes: bool) -> bool:
    """Check one checkpoint and print its lines; True when every file matches."""
    try:
        entries = read_manifest(path) or {}
    except ManifestError:
        entries = {}
    total = sum(e["size"] for e in entries.values())
    with tqdm(total=total if hashes else 0, unit="B", unit_scale=True, disable=None,
              desc=path.name, leave=False, file=sys.stderr) as bar:
        problems, listed = checkpoint_problems(path, hashes, progress=bar.update)
    if listed is None:
        print(f"FAILED: {path}: no {MANIFEST_FILE} (written before checkpoints had "
              "manifests): nothing to check against")
        return False
    what = "sizes and hashes" if hashes else "sizes"
    if problems:
        print(f"FAILED: {path} ({len(problems)} of {len(listed)} files, {what})")
        for problem in problems:
            print(f"  {problem}")
        return False
    print(f"OK: {path} ({len(listed)} files, {total / 1e6:.1f} MB, {what} match)")
    return True


def main(argv: list[str] | None = None) -> int:
    """Entry point; exit code 0 iff every file of every checkpoint matches its manifest."""
    parser = argparse.ArgumentParser(prog=f"python -m {PROG}", description=__doc__.split("\n")[0])
    commands = parser.add_subparsers(dest="command", required=True)
    verify = commands.add_parser("verify", help="check files against the manifest")
    verify.add_argument("dir", type=Path, help="a checkpoint, a run directory or its checkpoints/")
    verify.add_argument("--sizes", action="store_true", help="check sizes only (no re-read)")
    args = parser.parse_args(argv)
    results = [verify_one(path, not args.sizes) for path in checkpoints_in(args.dir)]
    return 0 if all(results) else 1


if __name__ == "__main__":
    sys.exit(run_cli(main, prog=PROG))
