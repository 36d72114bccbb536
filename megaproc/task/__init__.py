"""Synthetic-task training: batching of live graph-search examples, answer correctness and
the held-out evaluation shared by the curriculum hook and ``python -m megaproc.evaluate``."""
