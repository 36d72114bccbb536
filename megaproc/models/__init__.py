"""HuggingFace causal LMs for megaproc, built offline from hard-coded presets.

Public API:

* :func:`model_config` -- the HF config of a preset (``tiny``, ``gpt2``, ``gpt2:12_12_768``,
  ``pythia-160m``, ``qwen3-0.6b``, ``llama3-1b``, ...) for the run's vocabulary size;
* :func:`build_model` -- the model described by the run's ``model`` config section, randomly
  initialised or loaded from a local pretrained directory, optionally under ZeRO-3 init;
* :func:`count_parameters` -- parameter count of a config without allocating memory;
* :data:`PRESET_NAMES` -- the valid model names (``gpt2:L_H_D`` stands for custom GPT-2 sizes);
* :func:`build_classifier` -- a :class:`SequenceClassifier` (one logit per sequence) and its
  encoder for the sequence-classification track (:data:`CLASSIFIER_NAMES`, see
  :mod:`megaproc.models.classification`).
"""

from megaproc.models.classification import (
    CLASSIFIER_NAMES,
    SequenceClassifier,
    build_classifier,
    build_run_classifier,
    classifier_encoder,
    is_classifier_name,
)
from megaproc.models.factory import (
    DEFAULT_ATTN_IMPLEMENTATION,
    build_model,
    count_parameters,
    load_pretrained,
    model_config,
    zero3_construction,
)
from megaproc.models.overrides import parse_overrides, valid_override_keys
from megaproc.models.presets import PRESET_NAMES, PRESETS, get_preset

__all__ = [
    "CLASSIFIER_NAMES",
    "SequenceClassifier",
    "build_classifier",
    "build_run_classifier",
    "classifier_encoder",
    "is_classifier_name",
    "DEFAULT_ATTN_IMPLEMENTATION",
    "PRESETS",
    "PRESET_NAMES",
    "build_model",
    "count_parameters",
    "get_preset",
    "load_pretrained",
    "model_config",
    "parse_overrides",
    "valid_override_keys",
    "zero3_construction",
]
