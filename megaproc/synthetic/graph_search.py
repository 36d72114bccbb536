"""Graph-search examples for procedural pre-pretraining.

Our own implementation of the search task of Saparov et al., "Transformers Struggle to Learn
to Search" (ICLR 2025): given the edges of a directed acyclic graph, a start and a goal vertex
and the path walked so far, predict the next vertex of a path to the goal.

Symbolic form
    With ``n = max_input_size`` there are ``V = (n - 5) // 3`` vertex ids ``1..V`` and four
    special tokens ``PATH = V+1``, ``EDGE = V+2``, ``PAD = V+3``, ``QUERY = V+4`` (id 0 is
    unused).  An input is ``EDGE u v`` for every edge (shuffled), then ``QUERY start goal``,
    then ``PATH`` and the path so far (it begins with ``start``), left-padded with ``PAD`` to
    ``n`` tokens.  Graphs with ``3 * edges + 4 > n`` (or whose input plus path does not fit in
    ``n``) are rejected.  In symbolic mode ``GraphExample.prompt`` is the unpadded token
    sequence as space-separated integers and each output text is ``" <vertex id>"``.

Graph construction for a requested lookahead ``L`` (``max_edges = V``)
    ``num_paths`` is uniform in ``[2, (max_edges - 1) // L]`` (1 when ``L == 0``); the vertex
    budget is ``min(max(L * num_paths, 1) + 1 + U{0..5}, V)``.  The goal chain
    ``start -> ... -> goal`` has ``max(L, 1)`` edges; ``num_paths - 1`` distractor chains of
    length ``L`` or ``L + 1`` (the longer one only if the budget allows) leave the start; a
    chain of ``U{0..free}`` ancestors leads into the start; every remaining vertex is an extra
    vertex with ``U{0..3}`` children and ``U{0..3}`` parents (at least one of the two),
    children drawn among existing vertices with probability proportional to
    ``0.5 + in-degree`` and parents proportional to ``0.5 + out-degree`` among the existing
    vertices that are not its descendants (so no cycle is ever created).  Vertex ids are a
    random injection into ``1..V``.

Answers and lookahead
    The path so far is a prefix ``path[:j]`` of a shortest ``start -> goal`` path, drawn
    uniformly among all shortest paths.  The answer set at position ``j`` is every child of
    ``path[j-1]`` from which the goal is still reachable (usually one vertex, sometimes
    several; all of them go to ``output_texts``, in the order of ``answers``: first the next
    vertex of the sampled shortest path, then the others by id).  The example's lookahead is the number of breadth-first steps,
    starting from the children of ``path[j-1]``, until the goal is in the frontier or every
    frontier vertex descends from a correct child (see :func:`lookahead_depth`).  An attempt
    is kept only if that number equals the requested ``L``; otherwise the example draws a new
    graph (same ``L``), up to ``max_attempts`` times, and gives ``None`` if all fail.  Because
    the lookahead never exceeds the remaining distance to the goal and the goal chain has
    ``L`` edges, for ``L >= 1`` the kept position is in practice ``j = 1`` (path = [start]).
    A requested ``L = 0`` therefore builds its graph for a lookahead drawn uniformly from
    ``0..lookahead_cap`` and keeps a uniformly drawn position of the path whose lookahead is 0
    (for a longer chain usually a vertex further along it), so prompts also carry partial
    proofs.

Curriculum (stage -> lookahead)
    ``lookahead_cap = ((n - 5) // 3 - 1) // 2`` is the largest valid lookahead (62 for
    ``n = 384``).  ``max_lookahead`` sets the number of curriculum stages ``1..max_lookahead``;
    stage ``s`` has ``alpha = s / max_lookahead`` and draws ``L`` uniformly from
    ``0..max_L(s)`` with::

        max_L(s) = min(lookahead_cap, max(1, round(alpha * max_lookahead)))  ==  min(lookahead_cap, s)

    When ``max_lookahead > lookahead_cap`` (e.g. ``--max_input_size 384 --max_lookahead 64``)
    one warning is emitted at construction and stages past the cap draw up to the cap.

Determinism
    Example ``k`` at stage ``s`` is a pure function of ``(seed, stream_id, s, k)``: it uses its
    own ``random.Random`` seeded from those numbers (CPython's Mersenne Twister, stable across
    3.x versions), so any process or data-loader worker reproduces it from the index alone.
"""

from __future__ import annotations

import random
import struct
import warnings
from bisect import bisect_right
from dataclasses import dataclass, field
from itertools import accumulate

from megaproc.synthetic.natural_language import render_search_prompt

# Bump when a change alters which examples are produced for a given (seed, stage, index).
GENERATOR_VERSION = 1

MIN_INPUT_SIZE = 14          # smallest n with lookahead_cap >= 1
MAX_EXTRA_DEGREE = 3         # extra vertices get 0..3 children and 0..3 parents
DEGREE_SMOOTHING = 0.5       # attachment weight = 0.5 + degree
MAX_BUDGET_SLACK = 5         # vertex budget adds U{0..5} vertices
_MODE_STAGE = 0              # rng key namespaces: examples by curriculum stage ...
_MODE_FIXED_LOOKAHEAD = 1    # ... or at a fixed lookahead (benchmarks, analysis)


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


def lookahead_depth(children: list[list[int]], current: int, correct: set[int], goal: int) -> int:
    """Breadth-first steps from ``current``'s children until the goal is found or decided.

    The frontier starts as the children of ``current``, each labelled correct iff it is in
    ``correct``; a newly discovered vertex is labelled correct iff some frontier vertex with a
    correct label reaches it.  Before each step, if every frontier label is correct the answer
    is the number of steps taken so far; otherwise one step is counted and, if the goal is in
    the frontier, that count is the answer.
    """
    labels = {c: (c in correct) for c in children[current]}
    visited = set(labels)
    steps = 0
    while labels:
        if all(labels.values()):
            return steps
        steps += 1
        if goal in labels:
            return steps
        frontier = {}
        for vertex, ok in labels.items():
            for child in children[vertex]:
                if child not in visited:
                    visited.add(child)
                    frontier[child] = ok
                elif ok and child in frontier:
                    frontier[child] = True
        labels = frontier
    return steps


def _weighted_sample(rng: random.Random, items: list[int], weights: list[float], k: int) -> list[int]:
    """``k`` distinct items drawn successively with probability proportional to ``weights``."""
    if k <= 0:
        return []
    if k >= len(items):
        return list(items)
    cumulative = list(accumulate(weights))
    total = cumulative[-1]
    last = len(items) - 1
    rand = rng.random
    picked: list[int] = []
    while len(picked) < k:     # rejecting repeats == renormalising after each removal
        item = items[min(bisect_right(cumulative, rand() * total), last)]
        if item not in picked:
            picked.append(item)
    return picked


def build_lookahead_graph(rng: random.Random, lookahead: int, max_vertices: int, max_edges: int):
    """Build a DAG for one attempt at ``lookahead`` (internal ids; start is 0).

    Returns ``(children, parents, goal)`` where ``children[v]``/``parents[v]`` are lists of
    internal vertex indices.  See the module docstring for the construction.
    """
    rand = rng.random
    if lookahead == 0:
        num_paths = 1
    else:
        max_paths = (max_edges - 1) // lookahead
        num_paths = 2 + int(rand() * (max_paths - 1))
    budget = max(lookahead * num_paths, 1) + 1 + int(rand() * (MAX_BUDGET_SLACK + 1))
    budget = min(budget, max_vertices)
    children: list[list[int]] = [[] for _ in range(budget)]
    parents: list[list[int]] = [[] for _ in range(budget)]

    goal = max(lookahead, 1)
    for v in range(1, goal + 1):                         # goal chain 0 -> 1 -> ... -> goal
        children[v - 1].append(v)
        parents[v].append(v - 1)
    used = goal + 1
    for branch in range(num_paths - 1):                  # distractor chains out of the start
        length = lookahead
        later = (num_paths - 2 - branch) * lookahead
        if rand() < 0.5 and used + lookahead + 1 + later <= budget:
            length += 1
        previous = 0
        for _ in range(length):
            children[previous].append(used)
            parents[used].append(previous)
            previous = used
            used += 1
    num_ancestors = int(rand() * (budget - used + 1))    # ancestor chain into the start
    previous = 0
    for _ in range(num_ancestors):
        children[used].append(previous)
        parents[previous].append(used)
        previous = used
        used += 1

    for new in range(used, budget):                      # extra vertices
        num_children = int(rand() * (MAX_EXTRA_DEGREE + 1))
        low = 0 if num_children else 1
        num_parents = low + int(rand() * (MAX_EXTRA_DEGREE + 1 - low))
        existing = list(range(new))
        for child in _weighted_sample(rng, existing,
                                      [DEGREE_SMOOTHING + len(parents[v]) for v in existing],
                                      num_children):
            children[new].append(child)
            parents[child].append(new)
        if not num_parents:
            continue
        blocked = set(children[new])                     # descendants of the new vertex
        stack = list(blocked)
        while stack:
            for child in children[stack.pop()]:
                if child not in blocked:
                    blocked.add(child)
                    stack.append(child)
        candidates = [v for v in existing if v not in blocked]
        for parent in _weighted_sample(rng, candidates,
                                       [DEGREE_SMOOTHING + len(children[v]) for v in candidates],
                                       num_parents):
            children[parent].append(new)
            parents[new].append(parent)
    return children, parents, goal


def distances_to(goal: int, parents: list[list[int]]) -> tuple[list[int], list[int]]:
    """Edge distance of every vertex to ``goal`` (-1 if unreachable) and the BFS order."""
    distance = [-1] * len(parents)
    distance[goal] = 0
    order = [goal]
    for vertex in order:                                 # grows while iterating: a BFS queue
        d = distance[vertex] + 1
        for parent in parents[vertex]:
            if distance[parent] < 0:
                distance[parent] = d
                order.append(parent)
    return distance, order


def random_shortest_path(rng: random.Random, children: list[list[int]], distance: list[int],
                         order: list[int], start: int) -> list[int]:
    """A shortest ``start -> goal`` path drawn uniformly among all of them."""
    counts = None                                        # shortest-path counts, built lazily
    path = [start]
    vertex = start
    while distance[vertex] > 0:
        d = distance[vertex] - 1
        steps = [c for c in children[vertex] if distance[c] == d]
        if len(steps) > 1:
            if counts is None:
                counts = [0] * len(children)
                counts[order[0]] = 1
                for v in order[1:]:
                    dv = distance[v] - 1
                    counts[v] = sum(counts[c] for c in children[v] if distance[c] == dv)
            r = rng.random() * counts[vertex]
            for step in steps:
                r -= counts[step]
                if r < 0:
                    break
            vertex = step
        else:
            vertex = steps[0]
        path.append(vertex)
    return path


def shuffle_in_place(rng: random.Random, items: list, count: int | None = None) -> list:
    """Fisher-Yates shuffle driven by ``rng.random()`` (faster than ``random.shuffle``).

    With ``count``, only the first ``count`` positions are drawn (a uniform random
    ``count``-subset in random order, as ``random.sample`` would give).
    """
    rand = rng.random
    size = len(items)
    for i in range(size if count is None else min(count, size)):
        j = i + int(rand() * (size - i))
        items[i], items[j] = items[j], items[i]
    return items


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
        return self._generate(rng, lookahead)

    def example_at_lookahead(self, index: int, lookahead: int) -> GraphExample | None:
        """Example ``index`` of the fixed-lookahead stream (benchmarks and analysis)."""
        if not 0 <= int(lookahead) <= self.lookahead_cap:
            raise ValueError(f"lookahead must be in 0..{self.lookahead_cap} (got {lookahead})")
        rng = self._rng(_MODE_FIXED_LOOKAHEAD, int(lookahead), int(index))
        return self._generate(rng, int(lookahead))

    def _generate(self, rng: random.Random, lookahead: int) -> GraphExample | None:
        for _ in range(self.max_attempts):
            found = self._attempt(rng, lookahead)
            if found is not None:
                return self._finish(rng, lookahead, *found)
        return None

    def _attempt(self, rng: random.Random, lookahead: int):
        """One graph draw; ``(children, goal, path_prefix, answers)`` if it has ``lookahead``."""
        n = self.max_input_size
        # L = 0 is built either directly (path = [start]) or for a longer chain, keeping a later
        # position of lookahead 0 (see module docstring).
        build_for = lookahead or int(rng.random() * (self.lookahead_cap + 1))
        children, parents, goal = build_lookahead_graph(
            rng, build_for, self.num_vertex_ids, self.max_edges)
        num_edges = sum(map(len, children))
        room = n - 3 * num_edges - 4                     # tokens left for the path so far
        if room < 1:
            return None
        distance, order = distances_to(goal, parents)
        total = distance[0]
        if total < max(lookahead, 1):
            return None
        # lookahead <= remaining distance, so only positions with distance >= L can match.
        positions = list(range(1, min(total - lookahead + 1, total, room) + 1))
        if not positions:
            return None
        path = random_shortest_path(rng, children, distance, order, 0)
        shuffle_in_place(rng, positions)
        for j in positions:
            current = path[j - 1]
            correct = {c for c in children[current] if distance[c] >= 0}
            if lookahead_depth(children, current, correct, goal) == lookahead:
                answers = [path[j]] + sorted(c for c in correct if c != path[j])
                return children, goal, path[:j], answers
        return None

    def _finish(self, rng: random.Random, lookahead: int, children, goal, path, answers):
        """Assign vertex ids, shuffle edges and render the prompt."""
        ids = shuffle_in_place(rng, list(range(1, self.num_vertex_ids + 1)), len(children))
        edges = shuffle_in_place(rng, [(ids[u], ids[v]) for u, kids in enumerate(children)
                                       for v in kids])
        start, goal_id = ids[0], ids[goal]
        path_ids = [ids[v] for v in path]
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
