"""Answer correctness: is the greedy answer one of the example's ``output_texts``, as a full word?

The one fact everything here rests on
    Greedy decoding from ``prompt`` produces the token sequence ``t = ids(answer)`` exactly
    when, for every position ``j`` of ``t``, the argmax of the model's next-token
    distribution after ``prompt + t[:j]`` is ``t[j]``.  A single teacher-forced forward over
    ``prompt + t`` yields all of those argmaxes at once.  So "the greedy answer equals
    ``answer``" is decided by :func:`teacher_forced_correct` with no generation loop, and a
    batch of such checks costs exactly one forward per answer (every rank runs the same
    forwards, which ZeRO-3 needs, and the curriculum reuses the training forward itself).

Full word
    The answer's tokens (``word_mask``) must all be predicted.  If the answer text ends in a
    word character (letter, digit, ``_``; e.g. the symbolic answer ``" 12"``), the greedy
    token after it (``boundary_mask``, the eos position of the training sample) must not
    continue the word: a token whose text starts with a word character (``"3"`` -> ``" 123"``)
    makes the prediction wrong; eos, a space-led token or punctuation end the word.
    Natural-language answers (``" <attribute>."``) end with the period, which closes the word.
    This is exactly :func:`text_matches_answer` applied to the greedy continuation, with one
    caveat: the answer must be produced in its canonical tokenization (the one trained on);
    spelling the same text with other tokens counts as wrong.

Several valid answers (``len(output_texts) > 1``)
    * Training: the live task source adds one row per other valid answer of an example
      (``example_id``/``primary`` in the batch), so the training forward holds one
      teacher-forced row per valid answer; the curriculum window counts an example as correct
      when any of its rows is (:func:`megaproc.hooks.curriculum.examples_correct`), and the
      weighted loss trains the marginal likelihood of the valid answers
      (:func:`megaproc.loss.any_answer_weighted_loss`).  The primary row is ``output_texts[0]``
      (the next vertex of the sampled shortest path, as the original ``pptrain.py``).
    * Held-out evaluation (:mod:`megaproc.eval.task_accuracy`, ``python -m megaproc.evaluate``)
      checks every valid answer — one teacher-forced row per answer — and counts the example
      as correct when the greedy prediction equals any of them.
"""

from __future__ import annotations

import torch

from megaproc.data.batch import IGNORE_INDEX
from megaproc.data.prompt_answer import is_word_character
from megaproc.models.sliced_head import sliced_argmax


def word_continuation_table(tokenizer, vocab_size: int | None = None) -> torch.Tensor:
    """Bool [V]: True for tokens whose text starts with a word character (they extend a word).

    A token's text is taken as it decodes *after another token* (``decode([a, i])`` minus
    ``decode([a])``), not alone: a word-level vocabulary (:mod:`megaproc.task_vocab`) decodes
    ``[3, 5]`` as ``"3 5"`` although token ``5`` alone is ``"5"``, and sentencepiece drops the
    leading space of a sequence's first token; byte-level BPE gives the token's own text either
    way.  Special tokens (eos, pad, ...) and ids beyond the tokenizer's vocabulary are False.
    """
    size = max(len(tokenizer), int(vocab_size or 0))
    table = torch.zeros(size, dtype=torch.bool)
    special = set(getattr(tokenizer, "all_special_ids", []) or [])
    anchor = [i for i in range(len(tokenizer)) if i not in special][:1]
    prefix = tokenizer.decode(anchor)
    texts = tokenizer.batch_decode([anchor + [i] for i in range(len(tokenizer))])
    for token_id, text in enumerate(texts):
        text = text[len(prefix):] if text.startswith(prefix) else tokenizer.decode([token_id])
        table[token_id] = token_id not in special and bool(text) and is_word_character(text[0])
    return table


def teacher_forced_correct(logits: torch.Tensor, labels: torch.Tensor, word_mask: torch.Tensor,
                           boundary_mask: torch.Tensor | None = None,
                           continues_word: torch.Tensor | None = None,
                           positions: torch.Tensor | None = None) -> torch.Tensor:
    """Per-row bool [B]: the greedy prediction is the full answer word.

    ``logits`` [B, T, V] come from the teacher-forced forward and ``labels`` [B, T] are the
    next tokens; with a sliced head (:mod:`megaproc.models.sliced_head`) ``logits`` are [N, V]
    at the ``True`` positions of ``positions`` [B, T], which must cover ``word_mask`` and
    ``boundary_mask``.  Every ``word_mask`` position must predict its label; at a ``boundary_mask``
    position the prediction must not be a word-continuing token (``continues_word`` [V], see
    :func:`word_continuation_table`; without it the boundary is not checked).  Rows without
    answer tokens are False.
    """
    word_mask = word_mask.to(labels.device).bool() & (labels != IGNORE_INDEX)
    predicted = sliced_argmax(logits, positions)
    wrong = ((predicted != labels) & word_mask).any(dim=1)
    if boundary_mask is not None and continues_word is not None:
        table = continues_word.to(predicted.device).bool()
        if table.numel() < logits.size(-1):  # ids past the tokenizer never extend a word
            table = torch.cat([table, table.new_zeros(logits.size(-1) - table.numel())])
        extends = table[predicted]
        wrong |= (extends & boundary_mask.to(predicted.device).bool()).any(dim=1)
    return word_mask.any(dim=1) & ~wrong


def text_matches_answer(decoded: str, answer: str) -> bool:
    """True when the text ``decoded`` starts with the full word ``answer``.

    The character after the answer (if any) must not continue a word when the answer ends in
    a word character: ``" 12"`` matches ``" 12."`` and ``" 12 5"`` but not ``" 123"``.  Used to
    check free-running generations (tests, analysis) against ``output_texts``.
    """
    if not answer or not decoded.startswith(answer):
        return False
    if len(decoded) == len(answer) or not is_word_character(answer[-1]):
        return True
    return not is_word_character(decoded[len(answer)])
