"""HellaSwag throughput: ``python -m megaproc.evaluate`` vs ``lm_eval --model hf``; prints JSON.

Both tools score the same local HellaSwag-format file with the same exported model (a random
GPT-2, default 6 layers x 384 wide, saved with ``save_pretrained`` next to a byte-level BPE
trained here on English text from the standard library's docstrings: nothing is downloaded),
at the same ``--batch-size``, in float32 on the CPU.  Start-up and model load are excluded the
way the issue measured them: every tool also scores an 8-item file and that wall time is
subtracted from the full file's, so ``items_per_s = (N - 8) / (t_N - t_8)``.  The JSON holds
both tools' ``acc``/``acc_norm`` (they must be identical) and ``ratio`` = megaproc's items/s
over lm-eval's (target >= 1.5).

    python bench/eval_throughput.py [--items 392] [--batch-size 16] [--model gpt2:6_6_384]
                                    [--vocab 8192] [--workdir /tmp/megaproc_eval_bench]
                                    [--megaproc-args "--dtype float32"]
"""

from __future__ import annotations

import argparse
import ast
import json
import os
import random
import re
import shlex
import subprocess
import sys
import sysconfig
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

SMALL_ITEMS = 8
TASK_YAML = """include: {upstream}
task: {name}
tag: []
dataset_path: json
dataset_name: null
dataset_kwargs:
  data_files:
    validation: {data}
training_split: null
validation_split: validation
"""


def docstring_sentences(limit: int = 60000) -> list[str]:
    """English sentences from the docstrings of the standard library (sorted files: stable)."""
    root = Path(sysconfig.get_paths()["stdlib"])
    sentences: list[str] = []
    for path in sorted(root.glob("*.py")):
        try:
            tree = ast.parse(path.read_text(encoding="utf-8", errors="replace"))
        except (SyntaxError, ValueError):
            continue
        for node in ast.walk(tree):
            if isinstance(node, (ast.Module, ast.ClassDef, ast.FunctionDef)):
                doc = ast.get_docstring(node) or ""
                for part in re.split(r"(?<=[.!?])\s+", " ".join(doc.split())):
                    words = part.split()
                    if 6 <= len(words) <= 40 and part[0].isalpha() and part.endswith("."):
                        sentences.append(part)
        if len(sentences) >= limit:
            break
    return sentences


def hellaswag_rows(sentences: list[str], count: int, seed: int = 0) -> list[dict]:
    """HellaSwag-format rows: two sentences and the start of a third as the context
    (ctx_a / ctx_b), the rest of the third and three other sentences as the endings."""
    rng = random.Random(seed)
    rows = []
    for k in range(count):
        first, second, third, *endings = rng.sample(sentences, 7)
        words = third.split()
        cut = max(1, len(words) // 3)
        ctx_a = first + " " + second
        rows.append({"ind": k, "activity_label": rng.choice(["Cooking", "Home and Garden",
                                                             "Sports", "Computers"]),
                     "ctx_a": ctx_a, "ctx_b": " ".join(words[:cut]), "ctx": ctx_a,
                     "endings": [" ".join(words[cut:]) if j == 0 else e
                                 for j, e in enumerate(endings)],
                     "label": rng.randrange(4)})
    return rows


def prepare(workdir: Path, items: int, model_name: str, vocab: int) -> dict:
    """Write the tokenizer + model directory and the two HellaSwag files (cached in workdir)."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
    from transformers import AutoModelForCausalLM, PreTrainedTokenizerFast

    from megaproc.models import model_config

    workdir.mkdir(parents=True, exist_ok=True)
    sentences = docstring_sentences()
    model_dir = workdir / f"model_{model_name.replace(':', '_')}_v{vocab}"
    if not (model_dir / "config.json").is_file():
        tok = Tokenizer(models.BPE())
        tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
        tok.decoder = decoders.ByteLevel()
        trainer = trainers.BpeTrainer(vocab_size=vocab, special_tokens=["<|endoftext|>"],
                                      initial_alphabet=pre_tokenizers.ByteLevel.alphabet())
        tok.train_from_iterator(sentences, trainer)
        tokenizer = PreTrainedTokenizerFast(tokenizer_object=tok, bos_token="<|endoftext|>",
                                            eos_token="<|endoftext|>", pad_token="<|endoftext|>")
        import torch

        torch.manual_seed(0)
        config = model_config(model_name, len(tokenizer), bos_token_id=0, eos_token_id=0)
        model = AutoModelForCausalLM.from_config(config)
        model.save_pretrained(model_dir)
        tokenizer.save_pretrained(model_dir)
    files = {}
    rows = hellaswag_rows(sentences, items)
    for count in (SMALL_ITEMS, items):
        path = workdir / f"hellaswag_{count}.jsonl"
        path.write_text("".join(json.dumps(r) + "\n" for r in rows[:count]), encoding="utf-8")
        files[count] = path
    return {"model_dir": model_dir, "files": files}


THREADS: int | None = None  # --threads: OMP_NUM_THREADS of both tools' processes


def _env() -> dict:
    env = {k: v for k, v in os.environ.items() if k not in ("RANK", "WORLD_SIZE", "LOCAL_RANK")}
    env.update(HF_DATASETS_OFFLINE="1", HF_HUB_OFFLINE="1", TOKENIZERS_PARALLELISM="false",
               PYTHONPATH=str(REPO))
    if THREADS:
        env["OMP_NUM_THREADS"] = str(THREADS)
    return env


def run_megaproc(model_dir: Path, data: Path, batch_size: int,
                 extra: list[str]) -> tuple[float, dict]:
    """Wall time and the ``hellaswag`` section of one ``python -m megaproc.evaluate`` run."""
    cmd = [sys.executable, "-m", "megaproc.evaluate", "--model", str(model_dir), "--hellaswag",
           str(data), "--batch-size", str(batch_size), "--no-progress", *extra]
    start = time.perf_counter()
    proc = subprocess.run(cmd, cwd=REPO, env=_env(), capture_output=True, text=True)
    wall = time.perf_counter() - start
    if proc.returncode != 0:
        raise SystemExit(f"megaproc.evaluate failed: {proc.stderr.strip()[-2000:]}")
    section = json.loads(proc.stdout)["hellaswag"]
    return wall, {"acc": section["hellaswag_acc"], "acc_norm": section["hellaswag_acc_norm"]}


def run_lm_eval(model_dir: Path, data: Path, batch_size: int, workdir: Path) -> tuple[float, dict]:
    """Wall time and acc/acc_norm of one ``lm_eval --model hf`` run on a local task yaml."""
    import importlib.util

    spec = importlib.util.find_spec("lm_eval")
    if spec is None:
        raise SystemExit("lm-eval is not installed (pip install lm-eval)")
    upstream = Path(spec.submodule_search_locations[0]) / "tasks" / "hellaswag" / "hellaswag.yaml"
    name = f"hellaswag_bench_{data.stem}"
    tasks = workdir / "tasks" / data.stem
    tasks.mkdir(parents=True, exist_ok=True)
    (tasks / f"{name}.yaml").write_text(TASK_YAML.format(upstream=upstream, name=name, data=data))
    out = workdir / "lm_eval_out" / data.stem
    cmd = [sys.executable, "-m", "lm_eval", "--model", "hf", "--model_args",
           f"pretrained={model_dir},dtype=float32", "--include_path", str(tasks), "--tasks", name,
           "--batch_size", str(batch_size), "--device", "cpu", "--output_path", str(out)]
    start = time.perf_counter()
    proc = subprocess.run(cmd, cwd=workdir, env=dict(_env(), HF_HOME=str(workdir / "hf_home")),
                          capture_output=True, text=True)
    wall = time.perf_counter() - start
    if proc.returncode != 0:
        raise SystemExit(f"lm_eval failed: {proc.stderr.strip()[-2000:]}")
    result_file = max(out.rglob("results*.json"), key=lambda p: p.stat().st_mtime)
    metrics = json.loads(result_file.read_text())["results"][name]
    return wall, {"acc": metrics["acc,none"], "acc_norm": metrics["acc_norm,none"]}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--items", type=int, default=392)
    parser.add_argument("--batch-size", type=int, default=16)
    parser.add_argument("--model", default="gpt2:6_6_384", help="a megaproc model preset")
    parser.add_argument("--vocab", type=int, default=8192, help="BPE vocabulary size")
    parser.add_argument("--workdir", default="/tmp/megaproc_eval_bench")
    parser.add_argument("--megaproc-args", default="", help="extra megaproc.evaluate options")
    parser.add_argument("--threads", type=int, default=0,
                        help="OMP_NUM_THREADS for both tools (default: inherited)")
    parser.add_argument("--skip-lm-eval", action="store_true", help="time megaproc only")
    args = parser.parse_args()
    global THREADS
    THREADS = args.threads or None
    if args.items <= SMALL_ITEMS:
        raise SystemExit(f"--items must be > {SMALL_ITEMS}")
    workdir = Path(args.workdir)
    setup = prepare(workdir, args.items, args.model, args.vocab)
    extra = shlex.split(args.megaproc_args)
    small, full = setup["files"][SMALL_ITEMS], setup["files"][args.items]
    timed = args.items - SMALL_ITEMS
    result: dict = {"items": args.items, "batch_size": args.batch_size, "model": args.model,
                    "vocab": args.vocab,
                    "threads": args.threads or os.environ.get("OMP_NUM_THREADS") or os.cpu_count()}
    m_small, _ = run_megaproc(setup["model_dir"], small, args.batch_size, extra)
    m_full, m_metrics = run_megaproc(setup["model_dir"], full, args.batch_size, extra)
    result["megaproc"] = {"wall_s": round(m_full, 3), "startup_s": round(m_small, 3),
                          "items_per_s": round(timed / (m_full - m_small), 2), **m_metrics}
    if not args.skip_lm_eval:
        l_small, _ = run_lm_eval(setup["model_dir"], small, args.batch_size, workdir)
        l_full, l_metrics = run_lm_eval(setup["model_dir"], full, args.batch_size, workdir)
        result["lm_eval"] = {"wall_s": round(l_full, 3), "startup_s": round(l_small, 3),
                             "items_per_s": round(timed / (l_full - l_small), 2), **l_metrics}
        result["ratio"] = round(result["megaproc"]["items_per_s"]
                                / result["lm_eval"]["items_per_s"], 3)
        result["same_acc"] = (m_metrics["acc"] == l_metrics["acc"]
                              and m_metrics["acc_norm"] == l_metrics["acc_norm"])
    print(json.dumps(result, indent=2))


if __name__ == "__main__":
    main()
