"""Graph-search examples for procedural pre-pretraining.

Our own implementation of the search task of Saparov et al., "Transformers Struggle to Learn
to Search" (ICLR 2025): given the edges of a directed acyclic graph, a start and a goal vertex
and the path walked so far, predict the next vertex of a path to the goal.  The distribution
follows the authors' generator (``generate_training_set`` of their ``generator.cpp``).

Symbolic form
    With ``n = max_input_size`` there are ``V = (n - 5) // 3`` vertex ids ``1..V`` and four
    special tokens ``PATH = V+1``, ``EDGE = V+2``, ``PAD = V+3``, ``QUERY = V+4`` (id 0 is
    unused).  An input is ``EDGE u v`` for every edge (shuffled), then ``QUERY start goal``,
    then ``PATH`` and the path so far (it begins with ``start``), left-padded with ``PAD`` to
    ``n`` tokens.  Graphs with ``3 * edges + 4 > n`` are redrawn and a position whose input
    plus path does not fit in ``n`` is skipped.  In symbolic mode ``GraphExample.prompt`` is the
    unpadded token sequence as space-separated integers and each output text is
    ``" <vertex id>"``.

Graph construction for a lookahead ``L`` (``max_edges = V``; :mod:`.graph_construction`)
    ``num_paths`` is uniform in ``[2, (max_edges - 1) // L]``; the vertex budget is
    ``min(L * num_paths + 1 + U{0..5}, V)`` (``max(2, 1 + U{0..5})`` when ``L == 0``).  The goal
    chain ``start -> ... -> goal`` has ``max(L, 1)`` edges; ``num_paths - 1`` distractor chains
    of length ``L`` or ``L + 1`` (the longer one only if the budget allows) leave the start
    (none when ``L == 0``); a chain of ``U{0..free}`` ancestors leads into the start; every
    remaining vertex is an extra vertex with ``U{0..3}`` children and ``U{0..3}`` parents (at
    least one of the two), children drawn among existing vertices with probability
    proportional to ``0.5 + in-count`` and parents proportional to ``0.5 + out-count`` among
    the existing vertices that are not its descendants (so no cycle is ever created); the
    counts are upstream's, which leave out the edges a vertex drew for itself.  Graphs with more
    than 64 shortest ``start -> goal`` paths are redrawn.  Vertex ids are a random injection
    into ``1..V``.

Positions, answers and lookahead
    A *position* of a graph is a pair (shortest path ``p``, index ``j >= 1``): the path so far
    is ``p[:j]`` and ``next = p[j]``.  Its answer set is every child of ``p[j-1]`` from which
    the goal is reachable (``answers[0] = next``, then the others by id; all of them go to
    ``output_texts``, and there are several in a few percent of examples).  Its lookahead is
    :func:`lookahead_depth` with only ``next`` labelled correct: breadth-first steps from the
    children of ``p[j-1]`` until the goal is in the frontier or every frontier vertex descends
    from ``next`` (another child that also reaches the goal is a branch the search must rule
    out, as upstream; it can never exceed the remaining distance).  The positions of a graph
    are scanned as upstream does: path after path, ``j = 1, 2, ...`` along each (upstream's
    order of the paths comes from its data structures; here it is uniformly random).

Examples: upstream's stream, one example at a time
    Upstream writes a stream: it draws a lookahead ``L``, builds graphs for ``L`` until one has
    a position of lookahead ``L`` (the first in scan order is emitted), then draws the next
    example's lookahead and *goes on scanning the same graph* from the next position, building
    a new graph only when the rest of the graph has no match.  So most lookahead-0 examples
    (and a few others) are later positions ("partial proofs", usually ``j = 2``) of a graph
    built for an earlier example's lookahead.  Here example ``k`` is computed alone, from a
    short model of the stream's state before it:

    1. draw its lookahead ``L`` uniformly from ``0..max_L(stage)``;
    2. draw the lookahead ``P`` the current graph was built for, uniformly from
       ``1..max_L(stage)`` (a new graph is only built for a request the previous graph could
       not serve, and lookahead-0 requests almost always are served, so ``P = 0`` is left
       out); build graphs for ``P`` until one has a position of lookahead ``P`` and move past
       the first one; then draw further requests from ``0..max_L(stage)`` (earlier examples
       of the same graph), each moving past the next position that serves it, until one is
       not served;
    3. the first remaining position of lookahead ``L`` is the example; if there is none, graphs
       are built for ``L`` and the example is the first matching position of the first graph
       that has one (``None`` after ``max_attempts`` graphs).

    Step 2 is skipped when it cannot give a position of lookahead ``L`` (``P < 2`` or
    ``L > P``: later positions are closer to the goal than ``P``).  Measured against the
    authors' generator (``tests/synthetic/test_graph_distribution.py``) this reproduces the
    edge counts, input lengths, multi-answer shares and the path-length histogram within
    sampling error; upstream additionally re-emits a few exact repeats of the previous example
    (duplicated shortest paths; about 0.2% of examples at ``n = 98``), which this does not.

Curriculum (stage -> lookahead)
    ``lookahead_cap = ((n - 5) // 3 - 1) // 2`` is the largest valid lookahead (62 for
    ``n = 384``).  ``max_lookahead`` sets the number of curriculum stages ``1..max_lookahead``;
    stage ``s`` has ``alpha = s / max_lookahead`` and draws ``L`` uniformly from
    ``0..max_L(s)`` with::

        max_L(s) = min(lookahead_cap, max(1, round(alpha * max_lookahead)))  ==  min(lookahead_cap, s)

    When ``max_lookahead > lookahead_cap`` (e.g. ``--max_input_size 384 --max_lookahead 64``)
    one warning is emitted at construction and stages past the cap draw up to the cap.  The
    fixed-lookahead stream (:meth:`GraphSearchGenerator.example_at_lookahead`) is the last
    stage conditioned on ``L`` (its previous lookahead is drawn from ``0..lookahead_cap``).

Determinism
    Example ``k`` at stage ``s`` is a pure function of ``(seed, stream_id, s, k)``: it uses its
    own ``random.Random`` seeded from those numbers (CPython's Mersenne Twister, stable across
    3.x versions), so any process or data-loader worker reproduces it from the index alone.
"""

from __future__ import annotations

import random
import struct
import warnings
from dataclasses import dataclass, field
from typing import NamedTuple

from megaproc.synthetic.graph_construction import (
    build_lookahead_graph,
    distances_to,
    lookahead_depth,
    shortest_paths,
    shuffle_in_place,
)
from megaproc.synthetic.natural_language import render_search_prompt

# Bump when a change alters which examples are produced for a given (seed, stage, index).
# 2: upstream's lookahead (relative to the next vertex), position scan and stream continuation.
GENERATOR_VERSION = 2

MIN_INPUT_SIZE = 14          # smallest n with lookahead_cap >= 1
_MODE_STAGE = 0              # rng key namespaces: examples by curriculum stage ...
_MODE_FIXED_LOOKAHEAD = 1    # ... or at a fixed lookahead (benchmarks, analysis)

__all__ = ["GENERATOR_VERSION", "GraphExample", "GraphSearchGenerator", "MIN_INPUT_SIZE",
           "lookahead_depth"]


class _Graph(NamedTuple):
    """One drawn graph (internal ids; the start is 0) ready to be scanned for positions."""

    children: list[list[int]]
    goal: int
    distance: list[int]          # edge distance to the goal, -1 if unreachable
    paths: list[list[int]]       # every shortest start -> goal path, in scan order
    room: int                    # tokens left for the path so far
    memo: dict                   # (current, next) -> lookahead, filled while scanning


@dataclass
class GraphExample:
    """One search example: a prompt, every valid answer, and the symbolic graph behind it."""

    prompt: str
    output_texts: list[str]
    lookahead: int
    edges: list[tuple[int, int]]
    start: int
    goal: int
    path: list[int]
    answers: list[int]
    tokens: list[int] | None = None
    name: str | None = None
    attributes: dict[int, str] | None = field(default=None, repr=False)

    def to_json(self) -> dict:
        """The example as one JSON-serialisable line of a split ``.jsonl`` file."""
        record = {
            "prompt": self.prompt,
            "output_texts": list(self.output_texts),
            "lookahead": self.lookahead,
            "edges": [list(e) for e in self.edges],
            "start": self.start,
            "goal": self.goal,
            "path": list(self.path),
            "answers": list(self.answers),
        }
        if self.tokens is not None:
            record["tokens"] = list(self.tokens)
        return record


class GraphSearchGenerator:
    """Deterministic generator of graph-search examples with a lookahead curriculum.

    ``example(index, stage)`` is a pure function of ``(seed, stream_id, stage, index)``; see
    the module docstring for the task, the stage -> lookahead mapping and the cap.
    ``stream_id`` separates independent example streams under one seed (0 = training,
    1 = the held-out splits written by ``data_tools.build_splits``).
    """

    def __init__(self, max_input_size: int, max_lookahead: int, seed: int,
                 natural_language: bool = True, *, stream_id: int = 0, max_attempts: int = 64):
        if int(max_input_size) < MIN_INPUT_SIZE:
            raise ValueError(f"max_input_size must be at least {MIN_INPUT_SIZE} "
                             f"(got {max_input_size})")
        if not 1 <= int(max_lookahead) < 2 ** 15:
            raise ValueError(f"max_lookahead must be between 1 and 32767 (got {max_lookahead})")
        if not 0 <= int(seed) < 2 ** 63:
            raise ValueError(f"seed must be a non-negative 63-bit integer (got {seed})")
        if not 0 <= int(stream_id) < 2 ** 16:
            raise ValueError(f"stream_id must be in [0, 65535] (got {stream_id})")
        if int(max_attempts) < 1:
            raise ValueError(f"max_attempts must be >= 1 (got {max_attempts})")
        self.max_input_size = int(max_input_size)
        self.max_lookahead = int(max_lookahead)
        self.seed = int(seed)
        self.natural_language = bool(natural_language)
        self.stream_id = int(stream_id)
        self.max_attempts = int(max_attempts)
        self.num_vertex_ids = (self.max_input_size - 5) // 3
        self.max_edges = self.num_vertex_ids
        self.lookahead_cap = (self.num_vertex_ids - 1) // 2
        self.num_stages = self.max_lookahead
        v = self.num_vertex_ids
        self.path_token, self.edge_token, self.pad_token, self.query_token = v + 1, v + 2, v + 3, v + 4
        self.vocab_size = v + 5
        if self.max_lookahead > self.lookahead_cap:
            warnings.warn(
                f"max_lookahead={self.max_lookahead} exceeds the largest valid lookahead "
                f"{self.lookahead_cap} for max_input_size={self.max_input_size}; the curriculum "
                f"keeps {self.max_lookahead} stages but drawn lookaheads are capped at "
                f"{self.lookahead_cap}", stacklevel=2)

    # -- curriculum ---------------------------------------------------------------------------
    def check_stage(self, stage: int) -> int:
        """``stage`` as an int; ValueError unless it is in ``1..num_stages``."""
        stage = int(stage)
        if not 1 <= stage <= self.num_stages:
            raise ValueError(f"stage must be in 1..{self.num_stages} (got {stage})")
        return stage

    def alpha_for_stage(self, stage: int) -> float:
        """``alpha = stage / max_lookahead``."""
        return self.check_stage(stage) / self.max_lookahead

    def max_lookahead_for_stage(self, stage: int) -> int:
        """Largest lookahead drawn at ``stage``: ``min(cap, max(1, round(alpha * max_lookahead)))``."""
        alpha = self.alpha_for_stage(stage)
        return min(self.lookahead_cap, max(1, round(alpha * self.max_lookahead)))

    def config(self) -> dict:
        """Everything that determines the examples (stored in checkpoints and meta.json)."""
        return {"task": "graph_search", "generator_version": GENERATOR_VERSION,
                "max_input_size": self.max_input_size, "max_lookahead": self.max_lookahead,
                "lookahead_cap": self.lookahead_cap, "seed": self.seed,
                "natural_language": self.natural_language, "stream_id": self.stream_id,
                "max_attempts": self.max_attempts}

    # -- examples -----------------------------------------------------------------------------
    def _rng(self, mode: int, value: int, index: int) -> random.Random:
        if index < 0:
            raise ValueError(f"example index must be >= 0 (got {index})")
        return random.Random(struct.pack("<QHHHQ", self.seed, self.stream_id, mode, value, index))

    def requested_lookahead(self, index: int, stage: int) -> int:
        """The lookahead that ``example(index, stage)`` asks for (uniform in 0..max_L(stage))."""
        limit = self.max_lookahead_for_stage(stage)
        return int(self._rng(_MODE_STAGE, int(stage), int(index)).random() * (limit + 1))

    def example(self, index: int, stage: int) -> GraphExample | None:
        """Example ``index`` at curriculum ``stage``, or ``None`` if its draw is rejected."""
        limit = self.max_lookahead_for_stage(stage)
        rng = self._rng(_MODE_STAGE, int(stage), int(index))
        lookahead = int(rng.random() * (limit + 1))
        return self._generate(rng, lookahead, limit)

    def example_at_lookahead(self, index: int, lookahead: int) -> GraphExample | None:
        """Example ``index`` of the fixed-lookahead stream (benchmarks and analysis): the last
        stage's distribution conditioned on ``lookahead``."""
        if not 0 <= int(lookahead) <= self.lookahead_cap:
            raise ValueError(f"lookahead must be in 0..{self.lookahead_cap} (got {lookahead})")
        rng = self._rng(_MODE_FIXED_LOOKAHEAD, int(lookahead), int(index))
        return self._generate(rng, int(lookahead), self.lookahead_cap)

    def _generate(self, rng: random.Random, lookahead: int, limit: int) -> GraphExample | None:
        # The previous example's graph (module docstring) can only hold a later position of
        # lookahead L if it was built for P >= 2 and L <= P.
        previous = 1 + int(rng.random() * limit)
        if previous >= 2 and lookahead <= previous:
            found = self._continuation(rng, previous, lookahead, limit)
            if found is not None:
                return self._finish(rng, lookahead, *found)
        for _ in range(self.max_attempts):
            graph = self._draw_graph(rng, lookahead)
            if graph is None:
                continue
            positions = self._positions(graph)
            found = self._first_match(graph, positions, 0, lookahead)
            if found is not None:
                return self._finish(rng, lookahead, graph, *positions[found])
        return None

    def _continuation(self, rng: random.Random, previous: int, lookahead: int, limit: int):
        """``(graph, path, j)``: the position of lookahead ``lookahead`` that upstream's stream
        would emit next on a graph built for ``previous``, or ``None`` if it has none."""
        for _ in range(self.max_attempts):
            graph = self._draw_graph(rng, previous)
            if graph is None:
                continue
            positions = self._positions(graph)
            found = self._first_match(graph, positions, 0, previous)
            if found is None:
                continue                                 # no match: upstream draws a new graph
            # The stream may already have emitted more examples of this graph: each further
            # request (drawn like any example's) that the rest of the scan serves moves on.
            while found is not None:
                pointer = found + 1
                found = self._first_match(graph, positions, pointer, int(rng.random() * (limit + 1)))
            found = self._first_match(graph, positions, pointer, lookahead)
            return None if found is None else (graph, *positions[found])
        return None

    @staticmethod
    def _first_match(graph: _Graph, positions, begin: int, lookahead: int) -> int | None:
        """Index of the first of ``positions[begin:]`` whose lookahead is ``lookahead``."""
        children, goal, distance, memo = graph.children, graph.goal, graph.distance, graph.memo
        for k in range(begin, len(positions)):
            path, j = positions[k]
            current = path[j - 1]
            if lookahead > distance[current]:            # lookahead <= remaining distance
                continue
            if len(children[current]) == 1:              # a single child needs no search
                if lookahead == 0:
                    return k
                continue
            if lookahead == 0:
                continue
            key = (current, path[j])
            depth = memo.get(key)
            if depth is None:
                depth = memo[key] = lookahead_depth(children, current, {path[j]}, goal)
            if depth == lookahead:
                return k
        return None

    def _draw_graph(self, rng: random.Random, lookahead: int) -> _Graph | None:
        """One graph draw for ``lookahead``, or ``None`` if it is redrawn (too many edges or
        shortest paths)."""
        children, parents, goal = build_lookahead_graph(rng, lookahead, self.num_vertex_ids,
                                                        self.max_edges)
        room = self.max_input_size - 3 * sum(map(len, children)) - 4   # tokens for the path
        if room < 1:
            return None
        distance, order = distances_to(goal, parents)
        paths = shortest_paths(children, distance, order, 0)
        if not paths:
            return None
        if len(paths) > 1:
            shuffle_in_place(rng, paths)
        return _Graph(children, goal, distance, paths, room, {})

    @staticmethod
    def _positions(graph: _Graph) -> list[tuple[list[int], int]]:
        """Positions ``(path, j)`` in scan order: paths in turn, ``j = 1, 2, ...`` along each,
        while the path so far fits in the input."""
        return [(path, j) for path in graph.paths for j in range(1, min(len(path), graph.room + 1))]

    def _finish(self, rng: random.Random, lookahead: int, graph: _Graph, path: list[int], j: int):
        """Answers of position ``(path, j)``, vertex ids, shuffled edges and the prompt."""
        children, distance = graph.children, graph.distance
        current, following = path[j - 1], path[j]
        answers = [following] + sorted(c for c in children[current]
                                       if distance[c] >= 0 and c != following)
        goal = graph.goal
        ids = shuffle_in_place(rng, list(range(1, self.num_vertex_ids + 1)), len(children))
        edges = shuffle_in_place(rng, [(ids[u], ids[v]) for u, kids in enumerate(children)
                                       for v in kids])
        start, goal_id = ids[0], ids[goal]
        path_ids = [ids[v] for v in path[:j]]
        answer_ids = [ids[answers[0]]] + sorted(ids[v] for v in answers[1:])
        example = GraphExample(prompt="", output_texts=[], lookahead=lookahead, edges=edges,
                               start=start, goal=goal_id, path=path_ids, answers=answer_ids)
        if self.natural_language:
            vertex_ids = [ids[v] for v in range(len(children))]
            example.prompt, example.output_texts, example.name, example.attributes = \
                render_search_prompt(rng, edges, vertex_ids, start, goal_id, path_ids, answer_ids)
        else:
            sequence = self.symbolic_sequence(edges, start, goal_id, path_ids)
            example.tokens = [self.pad_token] * (self.max_input_size - len(sequence)) + sequence
            example.prompt = " ".join(map(str, sequence))
            example.output_texts = [f" {a}" for a in answer_ids]
        return example

    def symbolic_sequence(self, edges, start: int, goal: int, path: list[int]) -> list[int]:
        """Unpadded token ids: ``E u v``... ``Q start goal P path...``."""
        edge_token = self.edge_token
        sequence: list[int] = []
        for u, v in edges:
            sequence += (edge_token, u, v)
        sequence += (self.query_token, start, goal, self.path_token)
        sequence += path
        return sequence
