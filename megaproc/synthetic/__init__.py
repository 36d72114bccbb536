"""Synthetic procedural data generators: pure data code, no torch, no trainer.

- :mod:`megaproc.synthetic.graph_search`: the graph-search task (symbolic or natural language,
  :mod:`megaproc.synthetic.natural_language`), its curriculum mapping and determinism guarantees;
- :mod:`megaproc.synthetic.splits`: readers of the held-out splits of
  ``python -m data_tools.build_splits``.
"""

from megaproc.synthetic.graph_search import (
    GENERATOR_VERSION,
    GraphExample,
    GraphSearchGenerator,
    lookahead_depth,
)
from megaproc.synthetic.natural_language import render_search_prompt
from megaproc.synthetic.splits import ReservedPrompts, load_split

__all__ = [
    "GENERATOR_VERSION",
    "GraphExample",
    "GraphSearchGenerator",
    "ReservedPrompts",
    "load_split",
    "lookahead_depth",
    "render_search_prompt",
]
