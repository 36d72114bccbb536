"""Every ``python -m data_tools.*`` command documented in the recipes and the README, run as written.

The commands are read from the comments of ``configs/downstream/*.yaml``,
``configs/fineweb_edu*.yaml`` and ``configs/pile_diversity/*.yaml`` and from the README and
``docs/data.md`` (``bash`` blocks and inline code), so a documented command that breaks fails here.  They run against
small fake copies of each corpus's real layout (:mod:`tests.data_tools.corpora`) with only
these substitutions: ``DATA/`` and ``SCRATCH/`` point into the test directory, ``--tokenizer
gpt2`` is the tests' tiny tokenizer, outputs go under the test directory (the working
directory), and ``build_splits`` gets small ``--*-size`` values (its full size takes half a
minute).  Then every data prefix the recipes train and validate on must exist and open.
"""

from __future__ import annotations

import importlib
import re
import shlex

import numpy as np

from megaproc.config import data_sources, load_config
from megaproc.data.indexed import IndexedDataset

from .conftest import REPO_ROOT
from .corpora import write_c4, write_codeparrot, write_fineweb_edu, write_pile
from .test_deepmind_math import make_raw
from .test_import_shards import write_c4_packed, write_fineweb

RECIPE_GLOBS = ("configs/downstream/*.yaml", "configs/fineweb_edu*.yaml", "configs/pile_diversity/*.yaml")
COMMAND = "python -m data_tools."
SMALL_SPLITS = ["--eval-size", "8", "--test-size", "8", "--mixin-size", "8", "--no-progress"]


def _joined(lines: list[str]) -> list[str]:
    """Commands among ``lines`` (already stripped of comment marks), backslash continuations joined."""
    commands, current = [], None
    for line in lines:
        text = line.strip()
        if current is None and text.startswith(COMMAND):
            current = ""
        if current is None:
            continue
        current += " " + text.rstrip("\\")
        if not text.endswith("\\"):
            commands.append(current.strip())
            current = None
    return commands


def recipe_commands(path) -> list[str]:
    """The data_tools commands in the comment lines of a recipe."""
    return _joined([line.lstrip()[1:] for line in path.read_text().splitlines() if line.lstrip().startswith("#")])


def markdown_commands(path) -> list[str]:
    """The data_tools commands of a page's ``bash``/``sh`` blocks and inline code spans
    (a ``text`` block is a synopsis with placeholders, not a command)."""
    text = path.read_text()
    fenced = re.findall(r"```(?:bash|sh)\n(.*?)```", text, flags=re.DOTALL)
    commands = [c for block in fenced for c in _joined(block.splitlines())]
    outside = re.sub(r"```.*?```", "", text, flags=re.DOTALL)
    commands += [" ".join(span.split()) for span in re.findall(r"`(python -m data_tools\.\w+ [^`]+)`", outside)]
    return commands


def argv_of(command: str, root, tokenizer) -> tuple[str, list[str]]:
    """The module and arguments of a documented command, with the test's substitutions."""
    words = shlex.split(command, comments=True)
    assert words[:2] == ["python", "-m"], command
    module = words[2]
    argv = []
    for k, word in enumerate(words[3:]):
        if k and words[3 + k - 1] == "--tokenizer":
            word = str(tokenizer)
        argv.append(word.replace("DATA/", f"{root}/DATA/").replace("SCRATCH/", f"{root}/SCRATCH/"))
    if module == "data_tools.build_splits":
        argv += SMALL_SPLITS
    return module, argv


def make_fake_corpora(root) -> None:
    """Every corpus the documented commands read, in its real layout, under ``root``."""
    data = root / "DATA"
    write_c4(data / "c4", shards=3, per_shard=20)
    write_codeparrot(data / "codeparrot-clean", files=3, per_file=10)
    write_pile(data / "pile", shards=3, per_shard=24)
    write_fineweb_edu(data / "fineweb-edu", files=2, per_file=20)
    rng = np.random.default_rng(0)
    documents = [rng.integers(2, 400, size=int(rng.integers(5, 40))).tolist() for _ in range(30)]
    write_fineweb(data / "fineweb_edu_10B", "train", documents[:24], tokens_per_shard=300)
    write_fineweb(data / "fineweb_edu_10B", "val", documents[24:], tokens_per_shard=300)
    make_raw(data / "mathematics_dataset-v1.0")
    make_raw(root / "mathematics_dataset-v1.0")  # the README's example is relative
    (root / "SCRATCH" / "data").mkdir(parents=True)
    write_c4_packed(root / "SCRATCH" / "data" / "c4_packed", documents, seq_len=31, blocks_per_shard=4)


def test_every_documented_data_tools_command_runs_and_feeds_its_recipes(tmp_path, monkeypatch, hf_home,
                                                                        tokenizer_dir):
    recipes = sorted(p for pattern in RECIPE_GLOBS for p in REPO_ROOT.glob(pattern))
    pages = [REPO_ROOT / "README.md", REPO_ROOT / "docs" / "data.md"]
    documented = [c for path in recipes for c in recipe_commands(path)] + [c for page in pages
                                                                          for c in markdown_commands(page)]
    commands = list(dict.fromkeys(documented))  # README and recipes repeat some
    modules = {argv_of(c, tmp_path, tokenizer_dir)[0] for c in commands}
    assert {"data_tools.preprocess", "data_tools.import_shards", "data_tools.deepmind_math", "data_tools.verify",
            "data_tools.inspect", "data_tools.merge", "data_tools.build_splits"} <= modules, modules
    assert any("--hf-dataset" in c for c in commands) and any("--filter" in c for c in commands)

    make_fake_corpora(tmp_path)
    monkeypatch.chdir(tmp_path)
    for command in commands:
        module, argv = argv_of(command, tmp_path, tokenizer_dir)
        main = importlib.import_module(module).main
        assert main(argv) == 0, command

    arms = {}
    for path in recipes:
        cfg = load_config(path)
        for key in ("train", "valid"):
            for source in data_sources(getattr(cfg.data, key), f"data.{key}"):
                where = tmp_path / source.prefix
                if source.prefix.endswith(".jsonl"):
                    assert where.is_file(), (path.name, source.prefix)
                else:  # opens (checked pair); a 0.1% hash split of a toy corpus may well be empty
                    dataset = IndexedDataset(str(where))
                    assert key == "valid" or len(dataset) > 0, (path.name, source.prefix)
        if path.parent.name == "pile_diversity" and cfg.data.train:
            arms[path.name] = cfg.data.valid
    # the three diversity arms validate on the same PubMed and USPTO held-out sets
    assert len(arms) == 3 and all(valid == arms["pubmed.yaml"] for valid in arms.values()), arms
