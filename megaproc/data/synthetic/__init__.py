"""Synthetic procedural data: the graph-search task (symbolic or natural language).

See :mod:`megaproc.data.synthetic.graph_search` for the task, the curriculum mapping and the
determinism guarantees, and ``python -m data_tools.build_splits`` for held-out splits.
"""

from megaproc.data.synthetic.graph_search import (
    GENERATOR_VERSION,
    GraphExample,
    GraphSearchGenerator,
    lookahead_depth,
)
from megaproc.data.synthetic.natural_language import render_search_prompt
from megaproc.data.synthetic.stream import SyntheticStream, load_split, reserved_prompts

__all__ = [
    "GENERATOR_VERSION",
    "GraphExample",
    "GraphSearchGenerator",
    "SyntheticStream",
    "load_split",
    "lookahead_depth",
    "render_search_prompt",
    "reserved_prompts",
]
