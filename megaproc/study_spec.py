"""The study spec: a YAML file naming the stages of a study (the format is in docs/study.md).

    name: cpu                           # the study's name (job names, report titles)
    out_dir: runs/study/cpu             # default of --out-dir
    target_val_loss: 4.5                # optional: tokens_to_target in results.csv
    slurm: {time: "02:00:00"}           # sbatch options of every job (--slurm)
    stages:
      - name: splits                    # a data stage: python -m data_tools.build_splits
        splits: {max_input_size: 26, max_lookahead: 3, seed: 12345, symbolic: true}
      - name: pptrain                   # a training stage: a recipe plus overrides
        recipe: configs/pptrain_cpu.yaml
        nproc: 2                        # processes of each run (the deepspeed launcher if > 1)
        overrides: {task.splits_dir: "${splits}"}
      - name: pretrain
        recipe: configs/pretrain_cpu.yaml
        from: pptrain                   # every arm starts from each run of that stage ...
        seeds: [1, 2]                   # ... once per seed (run.seed)
        grid: {optim.lr: [1.0e-3, 2.0e-3]}
        arms:
          scratch: {from: null}         # ... unless the arm says otherwise
          transfer: {grid: {model.weights_to_transfer: [[everything], [attn]]}}
        evaluate: {split: "${splits}/test.jsonl"}    # python -m megaproc.evaluate flags

This module only reads and checks the file's structure; :mod:`megaproc.study_graph` expands it
into runs and checks every run's config.  Every problem is a :class:`StudyError` naming the
file and the key.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Optional

import yaml

from megaproc.errors import ConfigError
from megaproc.sweep_jobs import resolve_path

SPEC_KEYS = ("name", "description", "out_dir", "target_val_loss", "slurm", "stages")
TRAIN_STAGE_KEYS = ("name", "recipe", "from", "nproc", "seeds", "overrides", "grid", "arms",
                    "evaluate", "target_val_loss", "slurm")
SPLITS_STAGE_KEYS = ("name", "splits", "slurm")
# build_splits options a splits stage may set (the first three are required, so that the
# runs using the splits can be checked against them).
SPLITS_REQUIRED = ("max_input_size", "max_lookahead", "seed")
SPLITS_OPTIONAL = ("eval_size", "test_size", "mixin_size", "symbolic", "workers")
NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.+-]*$")
# What a study sets itself in every run; a spec must not.
STUDY_SET_KEYS = ("run.out_dir",)


class StudyError(ConfigError):
    """A bad study spec or run (one line naming the key; exit code 2)."""


class _Inherit:
    """Marker: an arm without ``from`` starts from its stage's ``from``."""

    def __repr__(self) -> str:
        return "INHERIT"


INHERIT = _Inherit()


@dataclass
class ArmSpec:
    """One arm of a training stage: overrides, its own grid, and where it starts from."""

    name: str
    parent: Any = INHERIT                # a stage name, None (no parent) or INHERIT
    overrides: dict = field(default_factory=dict)
    grid: dict = field(default_factory=dict)
    recipe: Optional[Path] = None        # None: the stage's recipe


@dataclass
class StageSpec:
    """A stage: ``kind`` "splits" (build_splits options) or "train" (a recipe and its runs)."""

    name: str
    kind: str
    recipe: Optional[Path] = None
    splits: dict = field(default_factory=dict)
    parent: Optional[str] = None
    nproc: int = 1
    seeds: list = field(default_factory=list)
    overrides: dict = field(default_factory=dict)
    grid: dict = field(default_factory=dict)
    arms: dict = field(default_factory=dict)   # name -> ArmSpec; empty: one unnamed arm
    evaluate: dict = field(default_factory=dict)   # evaluation name ("" if one) -> flags
    target_val_loss: Optional[float] = None
    slurm: dict = field(default_factory=dict)


@dataclass
class StudySpec:
    """A parsed study file (paths absolute)."""

    path: Path
    name: str
    out_dir: Optional[str]
    stages: list
    target_val_loss: Optional[float] = None
    slurm: dict = field(default_factory=dict)
    description: str = ""


# ----------------------------------------------------------------------------- checks
def _mapping(value: Any, where: str) -> dict:
    if value is None:
        return {}
    if not isinstance(value, dict):
        raise StudyError(f"{where} must be a mapping")
    return dict(value)


def _check_keys(data: dict, allowed: tuple, where: str) -> None:
    unknown = [k for k in data if k not in allowed]
    if unknown:
        raise StudyError(f"unknown key '{unknown[0]}' in {where} (valid: {', '.join(allowed)})")


def _number(value: Any, where: str) -> Optional[float]:
    if value is None:
        return None
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        raise StudyError(f"{where} must be a number, got {value!r}")
    return float(value)


def _dotted(data: dict, where: str) -> dict:
    """Overrides: dotted megaproc keys (``train.max_steps``) to values."""
    for key in data:
        if not isinstance(key, str) or "." not in key:
            raise StudyError(f"{where}: '{key}' must be a dotted megaproc key, e.g. "
                             "train.max_steps")
        if key in STUDY_SET_KEYS:
            raise StudyError(f"{where}: '{key}' is set by the study (one folder per run)")
    return data


def _grid(value: Any, where: str) -> dict:
    grid = _dotted(_mapping(value, where), where)
    for key, values in grid.items():
        if not isinstance(values, list) or not values:
            raise StudyError(f"{where}: '{key}' must list at least one value")
    return grid


def _evaluations(value: Any, where: str) -> dict:
    """The evaluations of a stage: ``{"": flags}`` for one, ``{name: flags}`` for several
    (a mapping whose every value is a mapping or a list: one evaluate command each)."""
    if value is None:
        return {}
    if isinstance(value, dict) and value and all(isinstance(v, (dict, list))
                                                 for v in value.values()):
        for name in value:
            if not isinstance(name, str) or not NAME.match(name):
                raise StudyError(f"{where}: evaluation name {name!r} must be letters, digits, "
                                 "_ . + -")
        return {name: _evaluate_args(flags, f"{where}.{name}") for name, flags in value.items()}
    return {"": _evaluate_args(value, where)}


def _evaluate_args(value: Any, where: str) -> list:
    """``python -m megaproc.evaluate`` flags: a mapping (``split: X`` -> ``--split X``,
    ``true`` -> the bare flag, ``false``/``null`` -> left out) or a list of arguments."""
    if isinstance(value, list):
        return [str(v) for v in value]
    if not isinstance(value, dict):
        raise StudyError(f"{where} must be a mapping of evaluate flags or a list of arguments")
    args = []
    for key, item in value.items():
        flag = "--" + str(key).replace("_", "-")
        if flag in ("--checkpoint", "--model"):
            raise StudyError(f"{where}: '{key}' is set by the study (the run's checkpoint)")
        if item is True:
            args.append(flag)
        elif item is not None and item is not False:
            args += [flag, str(item)]
    return args


def _seeds(value: Any, where: str) -> list:
    if value is None:
        return []
    if not isinstance(value, list) or not value or not all(
            isinstance(s, int) and not isinstance(s, bool) for s in value):
        raise StudyError(f"{where} must be a non-empty list of integers")
    if len(set(value)) != len(value):
        raise StudyError(f"{where} repeats a seed")
    return list(value)


def _recipe(value: Any, where: str, near: Path) -> Path:
    if not isinstance(value, str) or not value:
        raise StudyError(f"{where} must be a path")
    return resolve_path(value, near, where)


def _arms(value: Any, where: str, near: Path) -> dict:
    arms = {}
    for name, body in _mapping(value, where).items():
        name = str(name)
        if not NAME.match(name):
            raise StudyError(f"{where}: arm name '{name}' must be letters, digits, _ . + -")
        body = _mapping(body, f"{where}.{name}")
        arm = ArmSpec(name)
        if "from" in body:
            arm.parent = body.pop("from")
        arm.grid = _grid(body.pop("grid", None), f"{where}.{name}.grid")
        if "recipe" in body:
            arm.recipe = _recipe(body.pop("recipe"), f"{where}.{name}.recipe", near)
        arm.overrides = _dotted(body, f"{where}.{name}")
        arms[name] = arm
    return arms


def _splits_stage(data: dict, where: str) -> StageSpec:
    _check_keys(data, SPLITS_STAGE_KEYS, where)
    splits = _mapping(data["splits"], f"{where}.splits")
    _check_keys(splits, SPLITS_REQUIRED + SPLITS_OPTIONAL, f"{where}.splits")
    for key in SPLITS_REQUIRED:
        if key not in splits:
            raise StudyError(f"{where}.splits: '{key}' is required")
    for key, value in splits.items():
        wanted = bool if key == "symbolic" else int
        if not isinstance(value, wanted) or (wanted is int and isinstance(value, bool)):
            raise StudyError(f"{where}.splits.{key} must be {wanted.__name__}, got {value!r}")
    return StageSpec(data["name"], "splits", splits=splits,
                     slurm=_mapping(data.get("slurm"), f"{where}.slurm"))


def _train_stage(data: dict, where: str, near: Path) -> StageSpec:
    _check_keys(data, TRAIN_STAGE_KEYS, where)
    recipe = _recipe(data["recipe"], f"{where}.recipe", near) if "recipe" in data else None
    nproc = data.get("nproc", 1)
    if isinstance(nproc, bool) or not isinstance(nproc, int) or nproc < 1:
        raise StudyError(f"{where}.nproc must be an integer >= 1, got {nproc!r}")
    parent = data.get("from")
    if parent is not None and not isinstance(parent, str):
        raise StudyError(f"{where}.from must name an earlier stage")
    stage = StageSpec(
        data["name"], "train", recipe=recipe, parent=parent, nproc=nproc,
        seeds=_seeds(data.get("seeds"), f"{where}.seeds"),
        overrides=_dotted(_mapping(data.get("overrides"), f"{where}.overrides"),
                          f"{where}.overrides"),
        grid=_grid(data.get("grid"), f"{where}.grid"),
        arms=_arms(data.get("arms"), f"{where}.arms", near),
        evaluate=_evaluations(data.get("evaluate"), f"{where}.evaluate"),
        target_val_loss=_number(data.get("target_val_loss"), f"{where}.target_val_loss"),
        slurm=_mapping(data.get("slurm"), f"{where}.slurm"))
    arm_recipes = [a.recipe for a in stage.arms.values()]
    if recipe is None and (not arm_recipes or None in arm_recipes):
        raise StudyError(f"{where} needs a 'recipe' (or one in every arm)")
    for arm in stage.arms.values():
        shared = sorted(set(arm.grid) & set(stage.grid))
        if shared:
            raise StudyError(f"{where}.arms.{arm.name}.grid: '{shared[0]}' is already in "
                             f"the stage's grid")
    return stage


def _check_parents(stages: list) -> None:
    """Every ``from`` names an earlier training stage."""
    seen: dict[str, StageSpec] = {}
    for stage in stages:
        if stage.kind == "train":
            named = [("from", stage.parent)] + [(f"arms.{a.name}.from", a.parent)
                                                for a in stage.arms.values()]
            for key, parent in named:
                if parent is None or parent is INHERIT:
                    continue
                if not isinstance(parent, str) or parent not in seen:
                    raise StudyError(f"stage '{stage.name}': {key} '{parent}' is not an earlier "
                                     f"stage (stages: {', '.join(seen) or 'none before it'})")
                if seen[parent].kind != "train":
                    raise StudyError(f"stage '{stage.name}': {key} '{parent}' is a data stage; "
                                     "runs start from a training stage")
        seen[stage.name] = stage


def load_spec(path: str | Path) -> StudySpec:
    """Read and check a study file (structure, recipes, stage names, ``from`` links)."""
    path = Path(path)
    if not path.is_file():
        raise StudyError(f"study file not found: {path}")
    try:
        data = yaml.safe_load(path.read_text())
    except yaml.YAMLError as exc:
        raise StudyError(f"study file {path} is not valid YAML: {exc}".splitlines()[0]) from None
    data = _mapping(data, f"study file {path}")
    _check_keys(data, SPEC_KEYS, f"study file {path}")
    name = data.get("name") or path.stem
    if not isinstance(name, str) or not NAME.match(name):
        raise StudyError(f"study key 'name' must be letters, digits, _ . + -, got {name!r}")
    raw_stages = data.get("stages")
    if not isinstance(raw_stages, list) or not raw_stages:
        raise StudyError("study key 'stages' must list at least one stage")
    stages, near = [], path.resolve().parent
    for index, raw in enumerate(raw_stages):
        where = f"stages[{index}]"
        raw = _mapping(raw, where)
        stage_name = raw.get("name")
        if not isinstance(stage_name, str) or not NAME.match(stage_name):
            raise StudyError(f"{where}.name must be letters, digits, _ . + -, got {stage_name!r}")
        where = f"stage '{stage_name}'"
        if any(s.name == stage_name for s in stages):
            raise StudyError(f"{where} is defined twice")
        stages.append(_splits_stage(raw, where) if "splits" in raw
                      else _train_stage(raw, where, near))
    _check_parents(stages)
    out_dir = data.get("out_dir")
    if out_dir is not None and not isinstance(out_dir, str):
        raise StudyError("study key 'out_dir' must be a path")
    return StudySpec(path.resolve(), name, out_dir, stages,
                     target_val_loss=_number(data.get("target_val_loss"),
                                             "study key 'target_val_loss'"),
                     slurm=_mapping(data.get("slurm"), "study key 'slurm'"),
                     description=str(data.get("description") or ""))
