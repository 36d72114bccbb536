"""Every shipped recipe and DeepSpeed config is usable as shipped.

- every YAML under configs/ (recursively) is a trainer recipe that ``load_config`` accepts,
  or a sweep spec that the sweep loader accepts, or a study spec (configs/study/) that the
  study loader accepts;
- every recipe, and every JSON in ds_configs/ combined with a recipe, builds a DeepSpeed config
  with ``build_ds_config`` whose train batch is micro batch x grad accum x data-parallel size,
  and which DeepSpeed's own config parser (``DeepSpeedConfig``: schema of every section, batch
  consistency) accepts at that data-parallel size.
"""

from __future__ import annotations

import json
import warnings
from pathlib import Path
from unittest import mock

import pytest

from tests.launch import REPO

RECIPE_FILES = sorted((REPO / "configs").rglob("*.yaml"))
DS_CONFIGS = sorted((REPO / "ds_configs").glob("*.json"))
WORLD_SIZES = (1, 2, 8, 16)


def load_recipe(path: Path):
    """The recipe's Config, or None when the file is a sweep or study spec (then it must load
    as one)."""
    from megaproc.config import load_config

    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            return load_config(path)
    except Exception as recipe_error:  # noqa: BLE001 - re-raised below unless it is a sweep
        from megaproc.study_spec import load_spec
        from megaproc.sweep_jobs import load_sweep

        for loader in (load_sweep, load_spec):
            try:
                loader(path)
                return None
            except Exception:  # noqa: BLE001
                continue
        raise recipe_error from None


def deepspeed_accepts(ds: dict, data_parallel: int):
    """DeepSpeed's own parse of ``ds`` at ``data_parallel`` ranks (raises if it objects)."""
    import deepspeed.runtime.config as ds_config_module

    class DataParallel:  # the "mpu" DeepSpeed asks for the data-parallel world size
        def get_data_parallel_world_size(self):
            return data_parallel

    # Without a process group DeepSpeed assumes one rank; only the rank query needs a stub.
    with mock.patch.object(ds_config_module.dist, "get_rank", return_value=0):
        return ds_config_module.DeepSpeedConfig(ds, mpu=DataParallel())


def check_batch(cfg, ds_path: str | None, world_size: int) -> None:
    from megaproc.engine import build_ds_config

    if ds_path is not None:
        cfg.deepspeed.config = ds_path
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        ds = build_ds_config(cfg, world_size)
    micro, accum = cfg.train.micro_batch, cfg.train.grad_accum
    assert ds["train_micro_batch_size_per_gpu"] == micro
    assert ds["gradient_accumulation_steps"] == accum
    assert ds["train_batch_size"] == micro * accum * world_size
    parsed = deepspeed_accepts(ds, world_size)
    assert parsed.train_batch_size == micro * accum * world_size


def test_configs_directory_is_not_empty():
    assert len(RECIPE_FILES) >= 5 and len(DS_CONFIGS) >= 5
    names = {p.name for p in DS_CONFIGS}
    assert {"gpt2_xl_8x80g.json", "qwen3_1.7b_8x80g.json", "zero3_offload.json",
            "zero2_offload.json", "zero3_offload_nvme.json"} <= names


@pytest.mark.parametrize("path", RECIPE_FILES, ids=lambda p: str(p.relative_to(REPO / "configs")))
def test_recipe_parses_and_builds_its_deepspeed_config(path):
    cfg = load_recipe(path)
    if cfg is None:
        return  # a sweep spec, loaded by the sweep loader
    for world_size in WORLD_SIZES:
        check_batch(cfg, None, world_size)


@pytest.mark.parametrize("path", DS_CONFIGS, ids=lambda p: p.name)
def test_ds_config_builds_with_every_recipe(path):
    recipes = [c for c in map(load_recipe, RECIPE_FILES) if c is not None]
    assert recipes
    for cfg in recipes:
        for world_size in WORLD_SIZES:
            check_batch(cfg, str(path.relative_to(REPO)), world_size)


# What the cluster configs are for (docs/scale_out.md): stage, optimizer and parameter offload.
PURPOSE = {"gpt2_xl_8x80g.json": (2, None, None), "qwen3_1.7b_8x80g.json": (3, None, None),
           "zero2_offload.json": (2, "cpu", None), "zero3_offload.json": (3, "cpu", "cpu"),
           "zero3_offload_nvme.json": (3, "nvme", "nvme")}


@pytest.mark.parametrize("name", sorted(PURPOSE))
def test_cluster_ds_configs_choose_the_documented_stage_and_offload(name):
    ds = json.loads((REPO / "ds_configs" / name).read_text())
    ds |= {"train_micro_batch_size_per_gpu": 1, "gradient_accumulation_steps": 1,
           "train_batch_size": 8}
    zero = deepspeed_accepts(ds, 8).zero_config

    def device(section):
        return None if section is None or section.device == "none" else section.device

    assert (zero.stage, device(zero.offload_optimizer), device(zero.offload_param)) == PURPOSE[name]
