"""Natural-language rendering of graph-search examples.

Every example gets one random first name (e.g. "Alex") and every vertex a unique nonce
attribute word made of two random syllables (e.g. "wumpy", "gorpy"); each edge ``u -> v`` becomes
one sentence from :data:`EDGE_TEMPLATES` ("If Alex is wumpy, then Alex is gorpy.", "Everyone
that is wumpy is gorpy.", ...).  The facts are followed by the question and the proof so far::

    <facts> Given that Alex is X, and we want to prove Alex is Y. Proof: Alex is X. Alex is

where each further vertex of the path so far adds `` <attribute>. Alex is``.  The answer text
of a vertex is `` <attribute>.`` and every valid next vertex is in ``output_texts``.

Syllables follow one of the patterns in :data:`SYLLABLE_PATTERNS` (C = consonant, V = vowel);
a pattern is chosen uniformly, then each letter uniformly.
"""

from __future__ import annotations

import math
import random
from itertools import product

FIRST_NAMES = (
    "Alex", "Amy", "Anna", "Ben", "Beth", "Bob", "Carl", "Carla", "Chris", "Clara", "Dan",
    "Dana", "David", "Diana", "Eli", "Ella", "Emma", "Eric", "Eva", "Fay", "Finn", "Fiona",
    "Frank", "Gail", "George", "Gina", "Grace", "Hank", "Hannah", "Harry", "Helen", "Ian",
    "Ida", "Iris", "Ivan", "Jack", "Jane", "Jason", "Jean", "Jill", "Joe", "John", "Joy",
    "Judy", "Julia", "Karen", "Kate", "Ken", "Kim", "Kyle", "Laura", "Leo", "Lily", "Lisa",
    "Lucy", "Luke", "Mark", "Mary", "Max", "Maya", "Mia", "Mike", "Nancy", "Nate", "Nick",
    "Nina", "Noah", "Nora", "Olga", "Oliver", "Omar", "Oscar", "Owen", "Pam", "Paul", "Pedro",
    "Peter", "Quinn", "Rachel", "Ray", "Rita", "Rob", "Rosa", "Ruth", "Ryan", "Sam", "Sara",
    "Sean", "Sofia", "Steve", "Sue", "Tara", "Ted", "Tina", "Tom", "Tony", "Uma", "Vera",
    "Victor", "Wade", "Walter", "Wendy", "Will", "Xavier", "Yara", "Yusuf", "Zack", "Zoe",
    "Aaron", "Adam", "Alice", "Andrew", "Angela", "Brian", "Bruce", "Carol", "Cathy", "Derek",
    "Diego", "Elena", "Fatima", "Felix", "Gary", "Hugo", "Irene", "James", "Kevin", "Linda",
    "Marco", "Maria", "Martin", "Megan", "Nadia", "Naomi", "Pablo", "Priya", "Rahul", "Sarah",
    "Simon", "Tim", "Wei", "Yuki",
)

# Each sentence is split around the two attributes: "{0}A{1}B{2}" with the name in "{n}".
EDGE_TEMPLATES = (
    ("If {n} is ", ", then {n} is ", "."),
    ("If {n} is ", ", then they are ", "."),
    ("If a person is ", ", they are ", "."),
    ("Everyone that is ", " is ", "."),
    ("If someone is ", ", then they are ", "."),
    ("Anyone who is ", " is also ", "."),
)

VOWELS = "aeiou"
CONSONANTS = "bcdfghjklmnpqrstvwxyz"
SYLLABLE_PATTERNS = ("CV", "VC", "CVC", "CVV", "CCV", "VCV", "VCC")

# Words of the templates and the question: an attribute must never equal one of them.
RESERVED_WORDS = frozenset(
    "if is then they are a person everyone that someone anyone who also given and we want to "
    "prove proof".split())


def _syllables(pattern: str) -> tuple[str, ...]:
    letters = [VOWELS if ch == "V" else CONSONANTS for ch in pattern]
    return tuple("".join(chars) for chars in product(*letters))


def _syllable_table() -> tuple[str, ...]:
    """Every syllable, repeated so that each pattern has the same total count.

    A uniform draw from this table picks a pattern uniformly, then a syllable of that pattern
    uniformly: exactly the two-level draw, with one random number per syllable.
    """
    by_pattern = [_syllables(p) for p in SYLLABLE_PATTERNS]
    per_pattern = 1
    for syllables in by_pattern:
        per_pattern = math.lcm(per_pattern, len(syllables))
    table: list[str] = []
    for syllables in by_pattern:
        table.extend(syllables * (per_pattern // len(syllables)))
    return tuple(table)


SYLLABLE_TABLE = _syllable_table()


def random_attributes(rng: random.Random, count: int) -> list[str]:
    """``count`` distinct two-syllable nonce words (never a template word)."""
    table = SYLLABLE_TABLE
    # choices() draws table[floor(random() * size)] in order: the same words as two explicit
    # draws per word, in a faster loop.
    drawn = rng.choices(table, k=2 * count)
    words = [first + second for first, second in zip(drawn[::2], drawn[1::2])]
    unique = set(words)
    if len(unique) == count and unique.isdisjoint(RESERVED_WORDS):
        return words
    rand = rng.random
    size = len(table)
    kept: list[str] = []                     # rare: repair duplicates in order
    seen: set[str] = set()
    for word in words:
        while word in seen or word in RESERVED_WORDS:
            word = table[int(rand() * size)] + table[int(rand() * size)]
        seen.add(word)
        kept.append(word)
    return kept


def render_search_prompt(rng: random.Random, edges: list[tuple[int, int]], vertex_ids: list[int],
                         start: int, goal: int, path: list[int], answers: list[int]):
    """Render one example; returns ``(prompt, output_texts, name, attributes)``.

    ``edges`` are rendered in the given order (one random template each), ``attributes`` maps
    every id in ``vertex_ids`` to its unique word, and ``output_texts[i]`` is the answer text
    of ``answers[i]``.
    """
    name = FIRST_NAMES[int(rng.random() * len(FIRST_NAMES))]
    words = random_attributes(rng, len(vertex_ids))
    attributes = dict(zip(vertex_ids, words))
    templates = [(a.replace("{n}", name), b.replace("{n}", name), c) for a, b, c in EDGE_TEMPLATES]
    rand = rng.random
    num_templates = len(templates)
    facts = [f"{t[0]}{attributes[u]}{t[1]}{attributes[v]}{t[2]}"     # one template per edge
             for u, v in edges for t in (templates[int(rand() * num_templates)],)]
    subject = f" {name} is "
    pieces = [" ".join(facts),
              f" Given that {name} is {attributes[start]}, and we want to prove {name} is "
              f"{attributes[goal]}. Proof:"]
    for vertex in path:
        pieces.append(subject + attributes[vertex] + ".")
    pieces.append(f" {name} is")
    prompt = "".join(pieces)
    output_texts = [f" {attributes[a]}." for a in answers]
    return prompt, output_texts, name, attributes
