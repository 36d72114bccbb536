"""The memory/compute planner against independent references.

- parameter counts and the largest layer equal those of the presets instantiated on the meta
  device (largest layer as DeepSpeed's ``model_to_params`` defines it);
- model-state bytes equal DeepSpeed's ``estimate_zero2_model_states_mem_needs`` and
  ``estimate_zero3_model_states_mem_needs`` for every preset, offload choice and topology;
  ZeRO-0 and ZeRO-1 (no DeepSpeed estimator) equal the ZeRO-2 estimate where nothing is
  partitioned (one GPU) and order as the partitioning implies;
- model FLOPs per token equal torch's FlopCounterMode over a real forward + backward;
- the activation estimate tracks the bytes autograd actually saves (bf16, CPU);
- the command line prints every documented figure and the JSON keys.
"""

from __future__ import annotations

import json
import subprocess
import sys

import pytest
import torch

from megaproc.flops import (geometry, mfu, model_flops_per_token, parameter_counts, peak_flops,
                            peak_flops_for_name)
from megaproc.models import PRESETS, model_config
from megaproc.plan import GIB, activation_bytes, main, model_states, plan

MODELS = [*PRESETS, "gpt2:8_8_512"]
TOPOLOGIES = [(1, 1), (2, 1), (8, 1), (8, 2), (4, 16)]  # (GPUs per node, nodes)


def meta_model(config):
    from transformers import AutoModelForCausalLM

    with torch.device("meta"):
        return AutoModelForCausalLM.from_config(config)


@pytest.fixture(scope="module")
def sizes():
    """Per model: (params, largest layer) counted on the model built on the meta device."""
    out = {}
    for name in MODELS:
        model = meta_model(model_config(name, 50257))
        # Distinct parameters (tied ones once); largest = most parameters held by one module,
        # as deepspeed.runtime.zero.stage3.model_to_params counts (its data_ptr() dedup does
        # not work on meta tensors, so dedup here by identity).
        params = sum(p.numel() for p in {id(p): p for p in model.parameters()}.values())
        largest = max(sum(p.numel() for p in m.parameters(recurse=False)) for m in model.modules())
        out[name] = (params, largest)
    return out


@pytest.mark.parametrize("name", MODELS)
def test_parameter_counts_equal_the_instantiated_presets(name, sizes):
    from megaproc.models import count_parameters

    config = model_config(name, 50257)
    counts = parameter_counts(config)
    assert (counts["total"], counts["largest_layer"]) == sizes[name]
    assert counts["total"] == count_parameters(config)


@pytest.mark.parametrize("name", MODELS)
def test_model_states_agree_with_deepspeed_estimators(name, sizes):
    from deepspeed.runtime.zero.stage3 import estimate_zero3_model_states_mem_needs
    from deepspeed.runtime.zero.stage_1_and_2 import estimate_zero2_model_states_mem_needs

    p, largest = sizes[name]
    for gpn, nodes in TOPOLOGIES:
        for offload in (False, True):
            cpu, gpu = estimate_zero2_model_states_mem_needs(p, gpn, nodes, cpu_offload=offload)
            ours = model_states(p, largest, 2, "optimizer" if offload else "none", gpn, nodes)
            assert (ours.cpu_bytes, ours.gpu_bytes) == (cpu, gpu), (gpn, nodes, offload)
        for offload, offload_params in ((False, False), (True, False), (True, True)):
            for zero_init in (True, False):
                cpu, gpu, layer = estimate_zero3_model_states_mem_needs(
                    p, largest, gpn, nodes, cpu_offload=offload, cpu_offload_params=offload_params,
                    zero_init=zero_init)
                choice = "all" if offload_params else "optimizer" if offload else "none"
                ours = model_states(p, largest, 3, choice, gpn, nodes, zero_init=zero_init)
                assert (ours.cpu_bytes, ours.gpu_bytes) == (cpu, gpu), (gpn, nodes, choice)
                assert layer == 4 * largest
        # Nothing is partitioned on a single GPU: every stage holds the ZeRO-2 estimate at 1 GPU.
        cpu1, gpu1 = estimate_zero2_model_states_mem_needs(p, 1, 1, cpu_offload=False)
        stage = {s: model_states(p, largest, s, "none", gpn, nodes) for s in (0, 1, 2)}
        assert stage[0].gpu_bytes == gpu1  # ZeRO-0 replicates everything at any size
        assert stage[0].cpu_bytes == stage[1].cpu_bytes == stage[2].cpu_bytes
        if gpn * nodes == 1:
            assert stage[1].gpu_bytes == stage[2].gpu_bytes == gpu1
        else:
            assert stage[2].gpu_bytes < stage[1].gpu_bytes < stage[0].gpu_bytes


@pytest.mark.parametrize("zero,offload", [(0, "none"), (1, "none"), (1, "optimizer"),
                                          (2, "none"), (2, "optimizer"), (3, "none"),
                                          (3, "optimizer"), (3, "all")])
def test_plan_reports_the_estimators_figures_and_consistent_totals(zero, offload, sizes):
    from deepspeed.runtime.zero.stage3 import estimate_zero3_model_states_mem_needs
    from deepspeed.runtime.zero.stage_1_and_2 import estimate_zero2_model_states_mem_needs

    r = plan("qwen3-1.7b", 8, 2, zero, 2, 2048, offload=offload, vocab_size=50257)
    p, largest = sizes["qwen3-1.7b"]
    assert (r["params"], r["largest_layer_params"]) == (p, largest)
    if zero == 2:
        assert (r["cpu_model_states_bytes"], r["gpu_model_states_bytes"]) == \
            estimate_zero2_model_states_mem_needs(p, 8, 2, cpu_offload=offload != "none")
    if zero == 3:
        assert (r["cpu_model_states_bytes"], r["gpu_model_states_bytes"]) == \
            estimate_zero3_model_states_mem_needs(p, largest, 8, 2, cpu_offload=offload != "none",
                                                  cpu_offload_params=offload == "all")[:2]
    parts = r["gpu_params_bytes"] + r["gpu_grads_bytes"] + r["gpu_optimizer_bytes"]
    assert parts == r["gpu_model_states_bytes"]
    assert r["gpu_total_bytes"] == r["gpu_model_states_bytes"] + r["activation_bytes"]
    assert r["fits"] == (r["gpu_total_bytes"] <= 0.9 * 80 * GIB)
    assert r["tokens_per_step"] == 2 * 16 * 2048 and r["train_batch_size"] == 32
    assert r["flops_per_step"] == r["tokens_per_step"] * r["flops_per_token"]


def test_fits_follows_gpu_memory_and_offload():
    small = plan("gpt2-xl", 1, 1, 0, 1, 1024, gpu_mem_gb=24)
    assert not small["fits"]  # 20 bytes per parameter: ~31 GB of model states alone
    assert small["recommended"]["offload"] != "none"
    assert small["recommended"]["gpu_total_bytes"] <= 0.9 * 24 * GIB
    big = plan("gpt2-xl", 8, 1, 2, 2, 2048)
    assert big["fits"] and big["recommended"]["fits"]
    ckpt = plan("gpt2-xl", 8, 1, 2, 2, 2048, gradient_checkpointing=True)
    assert ckpt["activation_bytes"] < big["activation_bytes"] / 4
    assert any("max_position_embeddings=2048" in n for n in big["notes"])  # GPT-2 has 1024


ARCHS = {
    "gpt2": ("gpt2:2_4_64", ""),
    "gpt_neox": ("pythia-14m", "num_hidden_layers=2"),
    "qwen3": ("qwen3-0.6b", "num_hidden_layers=2,hidden_size=128,intermediate_size=256,"
              "num_attention_heads=4,num_key_value_heads=2,head_dim=32"),
    "llama": ("llama3-1b", "num_hidden_layers=2,hidden_size=128,intermediate_size=256,"
              "num_attention_heads=4,num_key_value_heads=2,head_dim=32"),
}


@pytest.mark.parametrize("arch", sorted(ARCHS))
def test_model_flops_per_token_equal_torch_flop_counter(arch):
    from torch.utils.flop_counter import FlopCounterMode
    from transformers import AutoModelForCausalLM

    name, overrides = ARCHS[arch]
    # Eager attention: the counter sees the score and weighted-sum matmuls explicitly.
    config = model_config(name, 320, overrides + ("," if overrides else "") +
                          "attn_implementation=eager")
    torch.manual_seed(0)
    model = AutoModelForCausalLM.from_config(config)
    batch, seq = 2, 48
    ids = torch.randint(0, 320, (batch, seq))
    counter = FlopCounterMode(display=False)
    with counter:
        model(input_ids=ids, labels=ids).loss.backward()
    assert counter.get_total_flops() == batch * seq * model_flops_per_token(config, seq)


def saved_activation_bytes(model, ids, checkpointing: bool) -> int:
    """Bytes of the distinct non-parameter tensors autograd saves in one forward pass."""
    params = {p.data_ptr() for p in model.parameters()}
    storages = {}

    def pack(t):
        if t.data_ptr() not in params:
            storage = t.untyped_storage()
            storages[storage.data_ptr()] = storage.nbytes()
        return t

    if checkpointing:
        # transformers 5 renamed gradient_checkpointing_enable (now deprecated)
        getattr(model, "activation_checkpointing_enable", model.gradient_checkpointing_enable)()
        model.config.use_cache = False
    model.train()
    with torch.autograd.graph.saved_tensors_hooks(pack, lambda t: t):
        model(input_ids=ids, labels=ids)
    return sum(storages.values())


@pytest.mark.parametrize("attention", ["sdpa", "eager"])
@pytest.mark.parametrize("checkpointing", [False, True], ids=["full", "checkpointed"])
@pytest.mark.parametrize("arch", sorted(ARCHS))
def test_activation_estimate_tracks_saved_tensors(arch, attention, checkpointing):
    from transformers import AutoModelForCausalLM

    name, overrides = ARCHS[arch]
    overrides = (overrides + "," if overrides else "") + f"attn_implementation={attention}"
    config = model_config(name, 512, overrides.replace("num_hidden_layers=2", "num_hidden_layers=4")
                          .replace("gpt2:2_", "gpt2:4_"), dropout=0.0)
    torch.manual_seed(0)
    model = AutoModelForCausalLM.from_config(config).to(torch.bfloat16)
    batch, seq = 4, 128
    measured = saved_activation_bytes(model, torch.randint(0, 512, (batch, seq)), checkpointing)
    est = activation_bytes(geometry(config), batch, seq, checkpointing, attention)
    # Saved during the forward pass: the layers, the head and the fp32 log-softmax (the rest
    # of the estimate, recomputation and the transient logits copies, is live only later).
    saved = est["layers"] + est["head"] + 4 * batch * seq * config.vocab_size
    assert 0.85 < saved / measured < 1.15, (saved, measured)


def test_peak_flops_and_mfu():
    assert peak_flops("cpu") is None and peak_flops(torch.device("cpu")) is None
    assert peak_flops_for_name("NVIDIA A100-SXM4-80GB") == 312e12
    assert peak_flops_for_name("NVIDIA H100 80GB HBM3") == 989e12
    assert peak_flops_for_name("NVIDIA H100 PCIe") == 756e12
    assert peak_flops_for_name("NVIDIA A10G") is None
    assert peak_flops_for_name("Some Future Accelerator") is None
    assert mfu(2000.0, 1e9, 1e12, num_devices=4) == pytest.approx(0.5)
    assert mfu(2000.0, 1e9, None) is None


def run_cli(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "megaproc.plan", *args], capture_output=True,
                          text=True, timeout=120)


def main_in_process(capsys, *args: str) -> tuple[int, str, str]:
    """``megaproc.plan.main(args)`` in this process: exit code, stdout, stderr (argparse's
    refusals exit 2 through SystemExit)."""
    try:
        code = main(list(args))
    except SystemExit as exc:
        code = exc.code
    out = capsys.readouterr()
    return code, out.out, out.err


def test_cli_json_and_text(capsys):
    args = ["--model", "gpt2-xl", "--gpus", "8", "--nodes", "1", "--zero", "2",
            "--micro-batch", "2", "--seq-len", "2048"]
    proc = run_cli(*args, "--json")   # the command itself, once; the rest in-process
    assert proc.returncode == 0, proc.stderr
    result = json.loads(proc.stdout)
    for key in ("params", "largest_layer_params", "gpu_model_states_bytes",
                "cpu_model_states_bytes", "activation_bytes", "tokens_per_step",
                "flops_per_step", "fits"):
        assert key in result, key
    assert result["tokens_per_step"] == 2 * 8 * 2048
    assert result["params"] == parameter_counts(model_config("gpt2-xl", 50257, "", 2048))["total"]
    code, text, _ = main_in_process(capsys, *args, "--gradient-checkpointing", "--offload")
    assert code == 0
    for word in ("parameters", "gradients", "optimizer states", "activations", "tokens",
                 "FLOPs", "recommended", "fits"):
        assert word in text, word
    code, _, err = main_in_process(capsys, "--model", "gpt5", "--gpus", "8", "--zero", "2",
                                   "--micro-batch", "1", "--seq-len", "8")
    assert code == 2 and "unknown model" in err
    assert len(err.strip().splitlines()) == 1
    assert main_in_process(capsys, *args[:-6], "--zero", "0", "--micro-batch", "1",
                           "--seq-len", "8", "--offload")[0] == 2
