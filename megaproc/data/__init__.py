"""Datasets: Megatron-compatible indexed files, GPT sample indices, blending and mixins."""
