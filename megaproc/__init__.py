"""megaproc: DeepSpeed training of HuggingFace causal LMs for procedural pre-pretraining."""

__version__ = "0.1.0"
