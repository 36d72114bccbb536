"""A study spec expanded into its graph of runs (nodes), each checked before anything runs.

A training stage gives one run per (arm, grid point, parent run, seed): arms are the stage's
``arms`` (or one unnamed arm), grid points the cartesian product of the stage's ``grid`` and
the arm's own ``grid``, parent runs every run of the stage named by ``from`` (none without
one), seeds the stage's ``seeds`` (``run.seed``; without them the recipe's seed, one run).
A parent is trained once however many runs start from it: its children get
``model.init_from=latest:<parent run dir>`` and wait for it.  A run without a parent gets
``model.init_from=null`` unless its overrides set one (a recipe's own ``init_from``, such as
pretrain_cpu.yaml's, never leaks into a ``scratch`` arm).

``${stage}`` in an override, grid value or evaluate flag is replaced by the output of that
stage (the split directory of a data stage, the run directory of a one-run training stage)
and makes the run wait for it.

Run ids are ``<stage>/<arm>__<grid point>__from-<parent>__seed<S>`` (the parts that apply;
``<stage>/run`` when none does); the run directory is ``OUT_DIR/<run id>``.  Every training run
is validated with :func:`megaproc.sweep_jobs.load_run_config` (what the trainer checks before
its first step), and a run reading a data stage's splits must use the same task settings.
"""

from __future__ import annotations

import itertools
import re
import sys
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Optional

from megaproc.seed_compat.classify_flags import format_value
from megaproc.errors import ConfigError
from megaproc.study_spec import INHERIT, StageSpec, StudyError, StudySpec
from megaproc.sweep_jobs import job_id, load_run_config, run_data_note

REFERENCE = re.compile(r"\$\{([A-Za-z0-9][A-Za-z0-9_.+-]*)\}")
SPLITS_OUTPUT = "data"       # a data stage's split directory, inside its node directory
SPLITS_BUILD = "build"       # where build_splits writes before the split dir is moved to data/
# The study's own trainer settings: resume from the run's checkpoints, no progress bars in
# the run's log.  They come first, so a spec may still override them.
RUN_DEFAULTS = ("checkpoint.resume=auto", "log.progress=false")


@dataclass
class Node:
    """One run of the study (a training run, or the build of a data stage)."""

    node_id: str
    stage: str
    kind: str                       # "train" | "splits"
    directory: Path                 # markers, logs; the run dir of a training run
    output: Path                    # what other stages see as ${stage}
    label: str = ""                 # the arm: the id without stage and seed (results rows)
    seed: Optional[int] = None
    parents: list = field(default_factory=list)     # node ids this one waits for
    point: dict = field(default_factory=dict)       # what the spec varies: arm/grid keys, from
    recipe: Optional[Path] = None
    overrides: list = field(default_factory=list)   # trainer overrides (run.out_dir last)
    nproc: int = 1
    evaluate: dict = field(default_factory=dict)    # name ("" if one) -> evaluate flags
    splits: dict = field(default_factory=dict)      # build_splits options (data stage)
    slurm: dict = field(default_factory=dict)
    target_val_loss: Optional[float] = None

    def to_json(self) -> dict:
        """A JSON-able description (``study_node.json`` in the node's directory)."""
        out = asdict(self)
        for key in ("directory", "output", "recipe"):
            out[key] = None if out[key] is None else str(out[key])
        return out

    @classmethod
    def from_json(cls, data: dict) -> "Node":
        """The node :meth:`to_json` described."""
        data = dict(data)
        for key in ("directory", "output", "recipe"):
            data[key] = None if data.get(key) is None else Path(data[key])
        return cls(**data)

    def splits_command(self) -> list[str]:
        """``python -m data_tools.build_splits ...`` of a data stage (into ``build/``)."""
        cmd = [sys.executable, "-m", "data_tools.build_splits",
               "--out-dir", str(self.directory / SPLITS_BUILD), "--overwrite", "--no-progress"]
        for key, value in self.splits.items():
            flag = "--" + key.replace("_", "-")
            if isinstance(value, bool):
                cmd += [flag] if value else []
            else:
                cmd += [flag, str(value)]
        return cmd


@dataclass
class StudyGraph:
    """The nodes of a study in dependency order (every parent before its children)."""

    spec: StudySpec
    out_dir: Path
    nodes: list

    def node(self, node_id: str) -> Node:
        """The node with id ``node_id``."""
        return next(n for n in self.nodes if n.node_id == node_id)

    def varied_keys(self) -> list:
        """Keys of the training runs' points whose value is not the same in every run (a run
        without the key counts as one more value)."""
        runs = [n for n in self.nodes if n.kind == "train"]
        keys: list = []
        for node in runs:
            keys += [k for k in node.point if k not in keys]
        return [k for k in keys
                if len({format_value(n.point[k]) if k in n.point else None for n in runs}) > 1]


# ----------------------------------------------------------------------------- expansion
def _short_keys(keys: list) -> dict:
    """Each grid key's last component, or the whole key where two would collide."""
    last = [k.rsplit(".", 1)[-1] for k in keys]
    return {k: (s if last.count(s) == 1 else k) for k, s in zip(keys, last)}


def _label_value(value: Any) -> Any:
    """A grid value as it reads in a run id: a list as its items joined by ``+``."""
    if isinstance(value, list):
        return "+".join(str(_label_value(v)) for v in value)
    return value


def _grid_points(grid: dict) -> list:
    keys = list(grid)
    return [dict(zip(keys, values)) for values in itertools.product(*(grid[k] for k in keys))]


class _References:
    """Replaces ``${stage}`` by the stage's output path and collects the nodes it names."""

    def __init__(self, by_stage: dict, where: str):
        self.by_stage, self.where, self.used = by_stage, where, []

    def __call__(self, value: Any) -> Any:
        if isinstance(value, str):
            return REFERENCE.sub(self._replace, value)
        if isinstance(value, list):
            return [self(v) for v in value]
        if isinstance(value, dict):
            return {k: self(v) for k, v in value.items()}
        return value

    def _replace(self, match: re.Match) -> str:
        name = match.group(1)
        nodes = self.by_stage.get(name)
        if nodes is None:
            raise StudyError(f"{self.where}: ${{{name}}} does not name an earlier stage")
        if len(nodes) != 1:
            raise StudyError(f"{self.where}: ${{{name}}} is ambiguous: stage '{name}' has "
                             f"{len(nodes)} runs")
        if nodes[0].node_id not in self.used:
            self.used.append(nodes[0].node_id)
        return str(nodes[0].output)


def _splits_node(stage: StageSpec, out_dir: Path) -> Node:
    directory = out_dir / stage.name
    return Node(stage.name, stage.name, "splits", directory, directory / SPLITS_OUTPUT,
                splits=dict(stage.splits), slurm=dict(stage.slurm))


def _train_nodes(spec: StudySpec, stage: StageSpec, out_dir: Path, by_stage: dict) -> list:
    arms = list(stage.arms.values()) or [None]
    nodes = []
    for arm in arms:
        parent_stage = stage.parent if arm is None or arm.parent is INHERIT else arm.parent
        parents = by_stage[parent_stage] if parent_stage else [None]
        grid = {**stage.grid, **(arm.grid if arm else {})}
        short = _short_keys(list(grid))
        for point in _grid_points(grid):
            for parent in parents:
                for seed in stage.seeds or [None]:
                    nodes.append(_train_node(spec, stage, arm, point, short, parent,
                                             len(parents) > 1, seed, out_dir, by_stage))
    return nodes


def _train_node(spec, stage, arm, point, short, parent, name_parent, seed, out_dir,
                by_stage) -> Node:
    parts = [arm.name] if arm else []
    if point:
        parts.append(job_id({short[k]: _label_value(v) for k, v in point.items()}))
    if parent is not None and name_parent:
        parts.append("from-" + parent.node_id.split("/", 1)[1].replace("/", "."))
    label = "__".join(parts)
    run_part = "__".join(parts + ([f"seed{seed}"] if seed is not None else [])) or "run"
    node_id = f"{stage.name}/{run_part}"
    where = f"study run {node_id}"
    refs = _References(by_stage, where)
    settings = refs({**stage.overrides, **(arm.overrides if arm else {}), **point})
    varied = refs({**(arm.overrides if arm else {}), **point})
    if seed is not None:
        if "run.seed" in settings:
            raise StudyError(f"{where}: 'run.seed' is set by the stage's seeds")
        settings["run.seed"] = seed
    if parent is not None:
        if "model.init_from" in settings:
            raise StudyError(f"{where}: 'model.init_from' is set by from: {parent.stage}")
        settings["model.init_from"] = f"latest:{parent.output}"
        varied["from"] = parent.node_id
    else:
        settings.setdefault("model.init_from", None)
    directory = out_dir / node_id
    overrides = [*RUN_DEFAULTS, *(f"{k}={format_value(v)}" for k, v in settings.items()),
                 f"run.out_dir={directory}"]
    evaluate = refs({name: list(flags) for name, flags in stage.evaluate.items()})
    parents = ([parent.node_id] if parent is not None else []) + \
        [u for u in refs.used if parent is None or u != parent.node_id]
    target = stage.target_val_loss if stage.target_val_loss is not None else spec.target_val_loss
    recipe = arm.recipe if arm is not None and arm.recipe is not None else stage.recipe
    return Node(node_id, stage.name, "train", directory, directory, label=label, seed=seed,
                parents=parents, point=varied, recipe=recipe, overrides=overrides,
                nproc=stage.nproc, evaluate=evaluate, slurm=dict(stage.slurm),
                target_val_loss=target)


def expand(spec: StudySpec, out_dir: str | Path) -> StudyGraph:
    """Every node of the study, in dependency order (see the module docstring)."""
    out_dir = Path(out_dir).resolve()
    by_stage: dict = {}
    nodes: list = []
    for stage in spec.stages:
        if stage.kind == "splits":
            stage_nodes = [_splits_node(stage, out_dir)]
        else:
            stage_nodes = _train_nodes(spec, stage, out_dir, by_stage)
        by_stage[stage.name] = stage_nodes
        nodes += stage_nodes
    ids = [n.node_id for n in nodes]
    repeated = sorted({i for i in ids if ids.count(i) > 1})
    if repeated:
        raise StudyError(f"two runs get the id {repeated[0]} (repeated grid values or arms?)")
    return StudyGraph(spec, out_dir, nodes)


# ----------------------------------------------------------------------------- validation
def _check_splits_settings(node: Node, cfg, graph: StudyGraph) -> None:
    """A run reading a data stage's splits must have the task settings they were built with."""
    if not cfg.task.splits_dir:
        return
    for other in graph.nodes:
        if other.kind != "splits" or Path(cfg.task.splits_dir) != other.output:
            continue
        built = {"task.max_input_size": other.splits["max_input_size"],
                 "task.max_lookahead": other.splits["max_lookahead"],
                 "task.seed": other.splits["seed"],
                 "task.natural_language": not other.splits.get("symbolic", False)}
        for key, value in built.items():
            have = getattr(cfg.task, key.split(".")[1])
            if have != value:
                raise StudyError(f"study run {node.node_id}: config key '{key}' is {have!r} but "
                                 f"the splits of stage '{other.stage}' were built with {value!r}")


def validate(graph: StudyGraph) -> list[str]:
    """Check every training run's config as the trainer would (the first bad one is refused,
    naming the run and the key); returns warnings about runs that will fail on their data.
    A run of a stage without ``seeds`` gets its recipe's ``run.seed`` as its seed."""
    warnings = []
    for node in graph.nodes:
        if node.kind != "train":
            continue
        try:
            cfg = load_run_config(node.recipe, node.overrides)
        except ConfigError as exc:
            raise StudyError(f"study run {node.node_id}: {exc}") from None
        if node.seed is None:
            node.seed = cfg.run.seed
        _check_splits_settings(node, cfg, graph)
        note = run_data_note(cfg)
        if note:
            warnings.append(f"run {node.node_id}: {note}")
    return warnings


def describe(graph: StudyGraph, status: dict) -> str:
    """The graph as text (what ``--dry-run`` prints): runs, overrides, dependencies."""
    runs = [n for n in graph.nodes if n.kind == "train"]
    todo = sum(status[n.node_id] != "done" for n in graph.nodes)
    lines = [f"study {graph.spec.name}: {len(graph.nodes)} nodes ({len(runs)} training runs), "
             f"{todo} to run, in {graph.out_dir}"]
    for node in graph.nodes:
        lines.append(f"  [{status[node.node_id]:>11}] {node.node_id}")
        if node.kind == "splits":
            lines.append(f"      {' '.join(node.splits_command()[1:])}")
            continue
        lines.append(f"      recipe {node.recipe} on {node.nproc} process(es)")
        if node.parents:
            lines.append(f"      after {', '.join(node.parents)}")
        own = [o for o in node.overrides if not o.startswith(RUN_DEFAULTS)
               and not o.startswith("run.out_dir=")]
        lines.append(f"      overrides {' '.join(own) or '(none)'}")
        for name, flags in node.evaluate.items():
            lines.append(f"      evaluate{' ' + name if name else ''} {' '.join(flags)}")
    return "\n".join(lines)
