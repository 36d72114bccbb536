"""Datasets: Megatron-compatible indexed files, GPT sample indices, blending and mixins."""
from megaproc.data.indexed import IndexedDataset, IndexedDatasetBuilder, IndexedDatasetError
from megaproc.data.gpt_dataset import GPTDataset, split_documents
from megaproc.data.blended import BlendedDataset
from megaproc.data.mixin import JsonlTaskDataset
from megaproc.data.build import build_train_valid
