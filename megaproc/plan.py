"""Memory and compute planner: will this model train on these GPUs, and with which ZeRO stage?

    python -m megaproc.plan --model gpt2-xl --gpus 8 --nodes 1 --zero 2 --micro-batch 2 \
        --seq-len 2048 [--grad-accum 1] [--offload [optimizer|all]] [--gpu-mem 80] \
        [--gradient-checkpointing] [--json]

Prints the parameter count; per-GPU memory for parameters, gradients, optimizer states and
activations; CPU memory per node; tokens and FLOPs per optimizer step; and a table of every
ZeRO stage / offload choice with whether it fits, recommending the first that does in the
order ZeRO-2, ZeRO-3, ZeRO-2/3 with the optimizer offloaded, ZeRO-3 with parameters offloaded
too (ZeRO-0 and 1 are listed but never preferred: ZeRO-2 moves as much data and keeps less).

Model states follow DeepSpeed's own estimators (``estimate_zero2_model_states_mem_needs`` and
``estimate_zero3_model_states_mem_needs`` in ``deepspeed.runtime.zero``) byte for byte: mixed
precision, per parameter 2 bytes of 16-bit weights, 2 of 16-bit and 4 of fp32 gradients, 4
of fp32 master weights and 8 of Adam moments; ZeRO-2 partitions all but the 16-bit weights,
ZeRO-3 those too (plus a gathered copy of the largest layer: 4 bytes per parameter);
CPU memory includes DeepSpeed's 1.5 buffer factor and counts per node.  ZeRO-0 (nothing
partitioned) and ZeRO-1 (optimizer states and fp32 gradients partitioned, 16-bit gradients
not) use the same per-parameter bytes; DeepSpeed has no estimator of its own for them.

Activations are an estimate per GPU for one micro-batch in 16-bit (the tensors autograd keeps
per layer, after Korthikanti et al. 2022, for this architecture's attention and MLP; with
``sdpa`` attention the score matrix is not stored), plus the logits and their fp32 copy for
the loss.  With activation checkpointing each layer keeps only its input, and one layer is
recomputed at a time.  A plan fits when model states + activations <= (1 - headroom) of the
GPU memory (headroom 0.1 by default: CUDA context, allocator fragmentation, buffers).
"""

from __future__ import annotations

import argparse
import json
import sys
from dataclasses import dataclass

from megaproc.errors import run_cli
from megaproc.flops import Geometry, geometry, model_flops_per_token, parameter_counts
from megaproc.models import get_preset, model_config

GIB = 1024**3
# Vocabulary of the published model of each family (the trainer takes it from the tokenizer).
DEFAULT_VOCAB = {"gpt2": 50257, "gpt_neox": 50304, "qwen3": 151936, "llama": 128256}
OFFLOAD_CHOICES = ("none", "optimizer", "all")


@dataclass(frozen=True)
class ModelStates:
    """Model-state memory of one ZeRO choice: bytes per GPU (split) and per node on the CPU."""

    stage: int
    offload: str            # none | optimizer | all (all = optimizer and, under ZeRO-3, params)
    gpu_params: int
    gpu_grads: int
    gpu_optimizer: int
    cpu_bytes: int

    @property
    def gpu_bytes(self) -> int:
        """Model-state bytes per GPU."""
        return self.gpu_params + self.gpu_grads + self.gpu_optimizer


def model_states(params: int, largest_layer: int, stage: int, offload: str = "none",
                 gpus_per_node: int = 1, nodes: int = 1, zero_init: bool = True,
                 buffer_factor: float = 1.5) -> ModelStates:
    """Model-state memory of ``params`` parameters under ZeRO ``stage`` and ``offload``.

    For stages 2 and 3 the GPU total and the CPU figure are exactly those of DeepSpeed's
    ``estimate_zero2_model_states_mem_needs`` / ``estimate_zero3_model_states_mem_needs``
    (``offload="optimizer"`` is ``cpu_offload=True, cpu_offload_params=False``; ``"all"`` is
    both; ZeRO-2 offloads only the optimizer, so ``"all"`` equals ``"optimizer"`` there).
    """
    if stage not in (0, 1, 2, 3):
        raise ValueError(f"ZeRO stage must be 0-3, got {stage}")
    if offload not in OFFLOAD_CHOICES:
        raise ValueError(f"offload must be one of {OFFLOAD_CHOICES}, got {offload!r}")
    if stage == 0 and offload != "none":
        raise ValueError("offloading needs ZeRO stage 1 or higher")
    # The arithmetic below is written exactly as in DeepSpeed (same operations, same order),
    # so the float products round to the same integers.
    p, gpn, bf = params, gpus_per_node, buffer_factor
    total_gpus = nodes * gpus_per_node
    if stage == 3:
        gpus_factor = 1 / nodes
        layer = 4 * largest_layer  # gathered 16-bit weights + 16-bit grads of one layer
        half = layer // 2
        if offload == "all":
            if zero_init:
                cpu = p * 18 * gpus_factor * bf
            else:
                cpu = p * max(4 * gpn, 18 * gpus_factor) * bf
            return ModelStates(3, offload, half, layer - half, 0, int(cpu))
        if offload == "optimizer":
            if zero_init:
                cpu = p * 16 * gpus_factor * bf
            else:
                cpu = p * max(4 * gpn, 16 * gpus_factor) * bf
            shard16 = int(2 * p / total_gpus)
            return ModelStates(3, offload, half + shard16, layer - half, 0, int(cpu))
        states = int(18 * p / total_gpus)  # 16-bit weights, fp32 grads, master, Adam: sharded
        params16, grads32 = int(2 * p / total_gpus), int(4 * p / total_gpus)
        cpu = largest_layer * 4 * gpn * bf if zero_init else p * 4 * gpn * bf
        return ModelStates(3, offload, half + params16, layer - half + grads32,
                           states - params16 - grads32, int(cpu))
    if offload != "none":  # ZeRO-1/2 with the optimizer (fp32 states and step) on the CPU
        cpu = p * max(4 * total_gpus, 16) * bf
        grads16 = 2 * p if stage == 1 else 0  # ZeRO-1 keeps full 16-bit gradients
        return ModelStates(stage, offload, 2 * p, grads16, 0, int(cpu))
    cpu = int(p * 4 * gpn * bf)  # every process first loads the whole model on the CPU
    if stage == 2:
        states = int(18 * p / total_gpus)
        grads = int(6 * p / total_gpus)  # 16-bit + fp32 gradients, sharded
        return ModelStates(2, offload, 2 * p, grads, states - grads, cpu)
    if stage == 1:  # full 16-bit gradients; fp32 gradients, master weights and Adam sharded
        states = int(16 * p / total_gpus)
        grads32 = int(4 * p / total_gpus)
        return ModelStates(1, offload, 2 * p, 2 * p + grads32, states - grads32, cpu)
    return ModelStates(0, offload, 2 * p, 6 * p, 12 * p, cpu)


def activation_bytes(g: Geometry, micro_batch: int, seq_len: int, checkpointing: bool = False,
                     attention: str = "sdpa", bytes_per_value: int = 2) -> dict[str, int]:
    """Estimated activation memory of one micro-batch on one GPU (see the module docstring).

    Counts the tensors autograd keeps for the backward pass of the HF implementations:
    ``layers`` (all blocks; under checkpointing only each block's input), ``head`` (final norm
    and output projection inputs), ``recompute`` (one block's activations, live while it is
    recomputed under checkpointing), ``logits`` (16-bit logits, their fp32 copy and the saved
    fp32 log-softmax, i.e. 10 bytes per logit in 16-bit) and ``total``; ``per_layer`` is one
    block without checkpointing.
    """
    s, b, h, a = seq_len, micro_batch, g.hidden, bytes_per_value
    sb = s * b
    # LayerNorm keeps its input; HF's RMSNorm upcasts: it keeps the fp32 input and the
    # normalised 16-bit values it multiplies the weight with.
    norm = a if g.norm_bias else 4 + a
    per_layer = 2 * norm * sb * h                             # the two norms of a block
    per_layer += a * sb * h                                   # input of the q/k/v projection
    per_layer += a * sb * (g.q_dim + 2 * g.kv_dim)            # q, k, v kept for attention
    if g.qk_norm:
        per_layer += norm * sb * (g.q_dim + g.kv_dim)         # the per-head q/k norms
    per_layer += a * sb * g.q_dim                             # o_proj input
    if attention == "eager":
        # The score matrix after softmax; Llama/Qwen3/NeoX take the softmax in fp32 and keep
        # both it and its 16-bit copy, GPT-2 stays in the model's precision.
        probs = a if g.model_type == "gpt2" else 4 + a
        per_layer += probs * g.heads * s * s * b
        if g.attn_dropout > 0:
            per_layer += (1 + a) * g.heads * s * s * b        # dropout mask and output
    else:
        per_layer += a * sb * g.q_dim                         # the fused kernel's output
    if g.resid_dropout > 0:
        per_layer += 2 * sb * h                               # two dropout masks (1 byte)
    inter = a * sb * g.intermediate
    per_layer += a * sb * h                                   # MLP input
    if g.gated_mlp:
        per_layer += 4 * inter                                # gate, up, act(gate), product
    elif g.model_type == "gpt2":
        per_layer += 5 * inter                                # HF's gelu_new keeps 4 + output
    else:
        per_layer += 2 * inter                                # activation input and output
    layers = g.layers * (a * sb * h if checkpointing else per_layer)
    head = (norm + a) * sb * h + (sb * h if g.embd_dropout > 0 else 0)
    recompute = per_layer if checkpointing else 0
    logits = sb * g.vocab * (a + 4 + 4)
    return {"per_layer": per_layer, "layers": layers, "head": head, "recompute": recompute,
            "logits": logits, "total": layers + head + recompute + logits}


def _options(stage_wanted: int, offload_wanted: str) -> list[tuple[int, str]]:
    # Preference order for the recommendation.  ZeRO-2 first: per step it moves as much data
    # as plain data parallelism (reduce-scatter + all-gather = one all-reduce) and keeps far
    # less; ZeRO-3 adds parameter all-gathers in forward and backward (~1.5x the traffic);
    # offloading adds PCIe traffic and CPU optimizer time.  ZeRO-0/1 are listed, never
    # preferred (they hold more than ZeRO-2 for the same traffic).
    out = [(2, "none"), (3, "none"), (2, "optimizer"), (3, "optimizer"), (3, "all"),
           (0, "none"), (1, "none"), (1, "optimizer")]
    if (stage_wanted, offload_wanted) not in out:
        out.append((stage_wanted, offload_wanted))
    return out


def plan(model: str, gpus: int, nodes: int, zero: int, micro_batch: int, seq_len: int, *,
         grad_accum: int = 1, offload: str = "none", gpu_mem_gb: float = 80.0,
         gradient_checkpointing: bool = False, vocab_size: int | None = None,
         overrides: str = "", attention: str = "sdpa", headroom: float = 0.1,
         zero_init: bool = True, buffer_factor: float = 1.5,
         cpu_mem_gb: float | None = None) -> dict:
    """The full plan as a JSON-ready dict (the keys the CLI's ``--json`` prints)."""
    if min(gpus, nodes, micro_batch, seq_len, grad_accum) < 1:
        raise ValueError("gpus, nodes, micro batch, seq len and grad accum must be >= 1")
    if zero == 0 and offload != "none":
        raise ValueError("--offload needs --zero 1, 2 or 3")
    if zero in (1, 2) and offload == "all":
        offload = "optimizer"  # ZeRO-1/2 can only offload the optimizer
    preset = get_preset(model)
    vocab = vocab_size or DEFAULT_VOCAB.get(preset.model_type, 50257)
    max_pos = preset.kwargs.get(preset.position_key)
    notes = []
    if max_pos is not None and seq_len > max_pos:
        notes.append(f"seq len {seq_len} > the preset's {preset.position_key}={max_pos}: "
                     f"planned with model.max_position_embeddings={seq_len}")
        max_pos = seq_len
    else:
        max_pos = None
    hf = model_config(model, vocab, overrides, max_pos)
    g = geometry(hf)
    counts = parameter_counts(hf)
    p, largest = counts["total"], counts["largest_layer"]
    act = activation_bytes(g, micro_batch, seq_len, gradient_checkpointing, attention)
    usable = gpu_mem_gb * GIB * (1 - headroom)

    def evaluate(stage: int, off: str) -> dict:
        ms = model_states(p, largest, stage, off, gpus, nodes, zero_init, buffer_factor)
        total = ms.gpu_bytes + act["total"]
        cpu_ok = None if cpu_mem_gb is None else ms.cpu_bytes <= cpu_mem_gb * GIB
        return {"zero": stage, "offload": off, "gpu_params_bytes": ms.gpu_params,
                "gpu_grads_bytes": ms.gpu_grads, "gpu_optimizer_bytes": ms.gpu_optimizer,
                "gpu_model_states_bytes": ms.gpu_bytes, "cpu_model_states_bytes": ms.cpu_bytes,
                "gpu_total_bytes": total,
                "fits": bool(total <= usable and cpu_ok is not False)}

    options = [evaluate(s, o) for s, o in _options(zero, offload)]
    chosen = next(o for o in options if o["zero"] == zero and o["offload"] == offload)
    recommended = next((o for o in options if o["fits"]), None)
    dp = gpus * nodes
    tokens = micro_batch * grad_accum * dp * seq_len
    per_token = model_flops_per_token(hf, seq_len)
    return {
        "model": model, "model_type": g.model_type, "vocab_size": vocab,
        "gpus_per_node": gpus, "nodes": nodes, "data_parallel": dp, "zero": zero,
        "offload": offload, "micro_batch": micro_batch, "grad_accum": grad_accum,
        "seq_len": seq_len, "gradient_checkpointing": gradient_checkpointing,
        "attention": attention, "gpu_mem_bytes": int(gpu_mem_gb * GIB), "headroom": headroom,
        "params": p, "largest_layer_params": largest, "embedding_params": counts["embedding"],
        **{k: v for k, v in chosen.items() if k not in ("zero", "offload")},
        "activation_bytes": act["total"], "activation_per_layer_bytes": act["per_layer"],
        "activation_logits_bytes": act["logits"],
        "train_batch_size": micro_batch * grad_accum * dp, "tokens_per_step": tokens,
        "flops_per_token": per_token, "flops_per_step": per_token * tokens,
        "options": options, "recommended": recommended, "notes": notes,
    }


def _gib(n: float) -> str:
    return f"{n / GIB:8.2f} GiB"


def render(result: dict) -> str:
    """Human-readable form of :func:`plan`'s result."""
    r = result
    off = "" if r["offload"] == "none" else f", offload {r['offload']}"
    lines = [
        f"{r['model']} ({r['model_type']}, vocab {r['vocab_size']}): {r['params'] / 1e9:.3f} B "
        f"parameters, largest layer {r['largest_layer_params'] / 1e6:.1f} M",
        f"{r['nodes']} node(s) x {r['gpus_per_node']} GPU(s) of {r['gpu_mem_bytes'] / GIB:.0f} "
        f"GiB, ZeRO-{r['zero']}{off}; micro batch {r['micro_batch']} x accum {r['grad_accum']} "
        f"x {r['data_parallel']} ranks = {r['train_batch_size']} sequences of {r['seq_len']}",
        "",
        "per GPU:",
        f"  parameters           {_gib(r['gpu_params_bytes'])}",
        f"  gradients            {_gib(r['gpu_grads_bytes'])}",
        f"  optimizer states     {_gib(r['gpu_optimizer_bytes'])}",
        f"  activations          {_gib(r['activation_bytes'])}   "
        f"({'checkpointed' if r['gradient_checkpointing'] else 'no checkpointing'}, logits "
        f"{r['activation_logits_bytes'] / GIB:.2f} GiB)",
        f"  total                {_gib(r['gpu_total_bytes'])}   of "
        f"{r['gpu_mem_bytes'] * (1 - r['headroom']) / GIB:.1f} GiB usable -> "
        f"{'fits' if r['fits'] else 'does NOT fit'}",
        f"CPU per node (model states): {_gib(r['cpu_model_states_bytes']).strip()}",
        f"per step: {r['tokens_per_step']:,} tokens, {r['flops_per_step']:.3e} FLOPs "
        f"({r['flops_per_token']:.3e} per token)",
        "",
        "ZeRO  offload     GPU total   CPU/node   fits",
    ]
    for o in r["options"]:
        lines.append(f"  {o['zero']}   {o['offload']:<9} {_gib(o['gpu_total_bytes'])} "
                     f"{o['cpu_model_states_bytes'] / GIB:8.1f} GiB   "
                     f"{'yes' if o['fits'] else 'no'}")
    rec = r["recommended"]
    lines.append("")
    if rec is None:
        lines.append("nothing fits: lower the micro batch, use --gradient-checkpointing, "
                     "or add GPUs")
    else:
        offload = "" if rec["offload"] == "none" else f" + offload {rec['offload']}"
        choice = f"ZeRO-{rec['zero']}{offload}"
        lines.append(f"recommended: {choice}")
    lines += [f"note: {n}" for n in r["notes"]]
    return "\n".join(lines)


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    """Command-line arguments of ``python -m megaproc.plan``."""
    ap = argparse.ArgumentParser(prog="python -m megaproc.plan",
                                 description=__doc__.split("\n\n")[0])
    ap.add_argument("--model", required=True, help="preset name (megaproc.models.PRESET_NAMES)")
    ap.add_argument("--gpus", type=int, required=True, help="GPUs per node")
    ap.add_argument("--nodes", type=int, default=1)
    ap.add_argument("--zero", type=int, choices=(0, 1, 2, 3), required=True)
    ap.add_argument("--micro-batch", type=int, required=True,
                    help="sequences per GPU per micro-step")
    ap.add_argument("--seq-len", type=int, required=True)
    ap.add_argument("--grad-accum", type=int, default=1)
    ap.add_argument("--offload", nargs="?", const="all", default="none", choices=OFFLOAD_CHOICES,
                    help="offload to CPU: 'optimizer', or 'all' (the default when given "
                         "without a value: optimizer, and parameters under ZeRO-3)")
    ap.add_argument("--gpu-mem", type=float, default=80.0, help="GiB per GPU (default 80)")
    ap.add_argument("--cpu-mem", type=float, default=None, help="GiB of CPU memory per node")
    ap.add_argument("--gradient-checkpointing", action="store_true")
    ap.add_argument("--vocab-size", type=int, default=None,
                    help="default: the published model's vocabulary")
    ap.add_argument("--overrides", default="", help="model.config_overrides, e.g. n_layer=24")
    ap.add_argument("--attention", choices=("sdpa", "eager"), default="sdpa")
    ap.add_argument("--headroom", type=float, default=0.1,
                    help="fraction of GPU memory kept free (default 0.1)")
    ap.add_argument("--no-zero-init", action="store_true",
                    help="ZeRO-3 model not built under zero.Init (whole model per process on CPU)")
    ap.add_argument("--json", action="store_true", help="print one JSON object")
    return ap.parse_args(argv)


def main(argv: list[str] | None = None) -> int:
    """Entry point of ``python -m megaproc.plan`` / ``megaproc-plan``."""
    args = parse_args(argv)

    def estimate() -> int:
        result = plan(args.model, args.gpus, args.nodes, args.zero, args.micro_batch,
                      args.seq_len, grad_accum=args.grad_accum, offload=args.offload,
                      gpu_mem_gb=args.gpu_mem,
                      gradient_checkpointing=args.gradient_checkpointing,
                      vocab_size=args.vocab_size, overrides=args.overrides,
                      attention=args.attention, headroom=args.headroom,
                      zero_init=not args.no_zero_init, cpu_mem_gb=args.cpu_mem)
        print(json.dumps(result, indent=2) if args.json else render(result))
        return 0

    return run_cli(estimate, prog="megaproc.plan", also=(ValueError,))


if __name__ == "__main__":
    sys.exit(main())
