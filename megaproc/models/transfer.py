"""Weight transfer from ``model.init_from`` into a fresh model (placeholder: every weight).

Sources: a megaproc checkpoint reference (a checkpoint directory, a run directory or
``latest:RUN_DIR``) or a local HF model directory.
"""

from __future__ import annotations

from pathlib import Path

from megaproc.console_log import get_logger
from megaproc.errors import ConfigError

log = get_logger(__name__)


def load_source_state_dict(ref: str) -> tuple[dict, str]:
    """``(state_dict, description)`` of an ``init_from`` reference."""
    path = Path(ref)
    if not ref.startswith("latest:") and (path / "config.json").is_file():
        from transformers import AutoModelForCausalLM

        model = AutoModelForCausalLM.from_pretrained(str(path), local_files_only=True)
        return model.state_dict(), f"HF model {path}"
    from megaproc.checkpoint import load_checkpoint_model, resolve_checkpoint_ref

    source = resolve_checkpoint_ref(ref)
    return load_checkpoint_model(source).state_dict(), f"checkpoint {source}"


def transfer_weights(model, model_cfg) -> dict:
    """Copy the source's weights into ``model``; every tensor must match."""
    state, where = load_source_state_dict(model_cfg.init_from)
    missing, unexpected = model.load_state_dict(state, strict=False)
    missing = [k for k in missing if "lm_head" not in k or not model.config.tie_word_embeddings]
    if missing or unexpected:
        raise ConfigError(f"model.init_from {where}: weights do not match the model "
                          f"(missing {missing[:3]}, unexpected {unexpected[:3]})")
    log.info(f"initialised model weights from {where}")
    return {}
