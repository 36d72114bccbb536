"""Graph construction for the graph-search task: the DAG built for a requested lookahead, its
distances and shortest paths, and the lookahead of a search position.

Everything here works on *internal* vertex indices (the start is 0, the goal is
``max(lookahead, 1)``); :mod:`megaproc.synthetic.graph_search` turns them into examples.
The construction follows the description in the module docstring of
:mod:`megaproc.synthetic.graph_search` ("Graph construction").
"""

from __future__ import annotations

import random
from bisect import bisect_right
from itertools import accumulate

MAX_EXTRA_DEGREE = 3         # extra vertices get 0..3 children and 0..3 parents
DEGREE_SMOOTHING = 0.5       # attachment weight = 0.5 + degree
MAX_BUDGET_SLACK = 5         # vertex budget adds U{0..5} vertices
MAX_SHORTEST_PATHS = 64      # graphs with more shortest start -> goal paths are redrawn


def lookahead_depth(children, current: int, correct: set[int], goal: int) -> int:
    """Breadth-first steps from ``current``'s children until the goal is found or decided.

    The frontier starts as the children of ``current``, each labelled correct iff it is in
    ``correct``; a newly discovered vertex is labelled correct iff some frontier vertex with a
    correct label reaches it in that step.  Before each step, if every frontier label is
    correct the answer is the number of steps taken so far; otherwise one step is counted and,
    if the goal is in the frontier, that count is the answer.

    The task's lookahead of a position is ``lookahead_depth(children, current, {next}, goal)``
    with ``next`` the vertex that follows ``current`` on the sampled path: the search has to go
    on until the goal is found or every surviving branch descends from ``next`` (another child
    that also reaches the goal counts as a branch to rule out, as upstream).  The result never
    exceeds the distance from ``current`` to the goal.
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
                elif ok and child in frontier:           # also reached from a correct vertex
                    frontier[child] = True
        labels = frontier
    return steps


def weighted_sample(rng: random.Random, items: list[int], weights: list[float], k: int) -> list[int]:
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

    Returns ``(children, parents, goal)`` where ``children[v]``/``parents[v]`` list the
    internal indices of ``v``'s children/parents.
    """
    rand = rng.random
    if lookahead == 0:
        num_paths = 1
        budget = max(2, 1 + int(rand() * (MAX_BUDGET_SLACK + 1)))
    else:
        max_paths = (max_edges - 1) // lookahead
        num_paths = 2 + int(rand() * (max_paths - 1))
        budget = lookahead * num_paths + 1 + int(rand() * (MAX_BUDGET_SLACK + 1))
    budget = min(budget, max_vertices)

    # The fixed structure, built as whole lists (this runs for every graph drawn):
    goal = max(lookahead, 1)                             # goal chain 0 -> 1 -> ... -> goal
    children: list[list[int]] = [[v + 1] for v in range(goal)]
    children.append([])
    parents: list[list[int]] = [[]]
    parents.extend([v] for v in range(goal))
    used = goal + 1
    start_children = children[0]
    for branch in range(num_paths - 1):                  # distractor chains out of the start
        length = lookahead
        later = (num_paths - 2 - branch) * lookahead
        if rand() < 0.5 and used + lookahead + 1 + later <= budget:
            length += 1
        end = used + length
        start_children.append(used)                      # 0 -> used -> used+1 -> ... -> end-1
        children.extend([v + 1] for v in range(used, end - 1))
        children.append([])
        parents.append([0])
        parents.extend([v - 1] for v in range(used + 1, end))
        used = end
    num_ancestors = int(rand() * (budget - used + 1))    # ancestor chain into the start
    if num_ancestors:
        end = used + num_ancestors                       # end-1 -> ... -> used+1 -> used -> 0
        children.append([0])
        children.extend([v - 1] for v in range(used + 1, end))
        parents[0].append(used)
        parents.extend([v + 1] for v in range(used, end - 1))
        parents.append([])
        used = end
    children.extend([] for _ in range(budget - used))
    parents.extend([] for _ in range(budget - used))

    if used < budget:
        _attach_extra_vertices(rng, children, parents, used)
    return children, parents, goal


def _attach_extra_vertices(rng: random.Random, children, parents, first: int) -> None:
    """Give every vertex from ``first`` on its children and parents (preferential attachment).

    The weight of an existing vertex ``v`` is ``0.5 + count(v)``, with upstream's counts: a
    vertex's in-count grows only when a later vertex picks it as a child and its out-count only
    when a later vertex picks it as a parent (the edges an extra vertex draws for itself are not
    counted for it).  A draw takes O(1): with ``total = 0.5 * new + len(tokens)`` it is a uniform
    vertex with probability ``0.5 * new / total``, else a uniform entry of ``tokens``, a list
    holding each vertex once per counted edge, which is exactly the weighted draw.  Repeats (and
    a parent among the new vertex's descendants) are rejected, which is the same as
    renormalising; after many rejections the draw falls back to :func:`weighted_sample` on the
    allowed vertices (still exact: the fallback draws from the same conditional distribution).
    """
    rand = rng.random
    in_tokens = [c for kids in children[:first] for c in kids]
    out_tokens = [u for u in range(first) for _ in children[u]]
    for new in range(first, len(children)):
        num_children = int(rand() * (MAX_EXTRA_DEGREE + 1))
        low = 0 if num_children else 1
        num_parents = low + int(rand() * (MAX_EXTRA_DEGREE + 1 - low))
        for child in _draw_distinct(rng, new, in_tokens, num_children, ()):
            children[new].append(child)
            parents[child].append(new)
            in_tokens.append(child)
        if not num_parents:
            continue
        blocked = set(children[new])                     # descendants of the new vertex
        stack = list(blocked)
        while stack:
            for child in children[stack.pop()]:
                if child not in blocked:
                    blocked.add(child)
                    stack.append(child)
        for parent in _draw_distinct(rng, new, out_tokens, num_parents, blocked):
            children[parent].append(new)
            parents[new].append(parent)
            out_tokens.append(parent)


def _draw_distinct(rng: random.Random, new: int, tokens: list[int], k: int, blocked) -> list[int]:
    """``k`` distinct vertices of ``0..new-1`` outside ``blocked``, drawn successively with
    weight ``0.5 + tokens.count(v)`` (all of them if there are at most ``k``)."""
    if k <= 0:
        return []
    allowed = new - len(blocked)
    if k >= allowed:
        return [v for v in range(new) if v not in blocked]
    rand = rng.random
    half = DEGREE_SMOOTHING * new
    total = half + len(tokens)
    last = len(tokens) - 1
    picked: list[int] = []
    rejections = 0
    while len(picked) < k:
        r = rand() * total
        vertex = int(r / DEGREE_SMOOTHING) if r < half else tokens[min(int(r - half), last)]
        if vertex in picked or vertex in blocked:
            rejections += 1
            if rejections > 32:                          # mostly blocked: draw exactly
                candidates = [v for v in range(new) if v not in blocked and v not in picked]
                weights = [DEGREE_SMOOTHING] * new
                for token in tokens:
                    weights[token] += 1.0
                return picked + weighted_sample(rng, candidates, [weights[v] for v in candidates],
                                                k - len(picked))
            continue
        picked.append(vertex)
    return picked


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


def shortest_paths(children: list[list[int]], distance: list[int], order: list[int], start: int,
                   limit: int = MAX_SHORTEST_PATHS) -> list[list[int]] | None:
    """Every shortest ``start -> goal`` path (``[]`` if the goal is unreachable, ``None`` if
    there are more than ``limit``).

    A path steps from ``v`` to a child ``c`` with ``distance[c] == distance[v] - 1``;
    ``distance`` and ``order`` come from :func:`distances_to`.
    """
    if distance[start] < 0:
        return []
    path = [start]                                       # usually there is only one: walk it
    vertex = start
    while distance[vertex] > 0:
        d = distance[vertex] - 1
        steps = [c for c in children[vertex] if distance[c] == d]
        if len(steps) > 1:
            break
        vertex = steps[0]
        path.append(vertex)
    else:
        return [path]
    counts = [0] * len(children)                         # shortest-path counts to the goal
    counts[order[0]] = 1
    for vertex in order[1:]:                             # increasing distance
        d = distance[vertex] - 1
        counts[vertex] = sum(counts[c] for c in children[vertex] if distance[c] == d)
    if counts[start] > limit:
        return None
    paths: list[list[int]] = []
    stack = [[start]]
    while stack:
        path = stack.pop()
        vertex = path[-1]
        if distance[vertex] == 0:
            paths.append(path)
            continue
        d = distance[vertex] - 1
        stack.extend(path + [c] for c in children[vertex] if distance[c] == d)
    return paths


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
