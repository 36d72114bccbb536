"""Datasets: Megatron-compatible indexed files, GPT sample indices, blending and mixins."""
from megaproc.data.indexed import IndexedDataset, IndexedDatasetBuilder, IndexedDatasetError
