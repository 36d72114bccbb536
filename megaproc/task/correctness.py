"""Answer correctness: does greedy decoding produce one of the example's ``output_texts``?

The one fact everything here rests on
    Greedy decoding from ``prompt`` produces the token sequence ``t = ids(answer)`` exactly
    when, for every position ``j`` of ``t``, the argmax of the model's next-token
    distribution after ``prompt + t[:j]`` is ``t[j]``.  A single teacher-forced forward over
    ``prompt + t`` yields all of those argmaxes at once.  So "the greedy answer equals
    ``answer``" is decided by :func:`teacher_forced_correct` with no generation loop, and a
    batch of such checks costs exactly one forward per answer (every rank runs the same
    forwards, which ZeRO-3 needs, and the curriculum reuses the training forward itself).

What counts as the answer ("full word")
    The compared tokens are the answer's tokens (``word_mask``, see
    :mod:`megaproc.task.encoding`): for natural-language examples ``" <attribute>."`` — the
    trailing period closes the word, so a prediction that only starts like the attribute is
    wrong; for answers ending in a letter or digit the eos after them is compared too.
    Comparison is on the canonical tokenization of the answer text (the one the model is
    trained on); a decoding that spells the same text with other tokens counts as wrong.

Several valid answers (``len(output_texts) > 1``)
    * Training examples are trained on ``output_texts[0]`` (the next vertex of the sampled
      shortest path, as the original ``pptrain.py`` did).  The teacher-forced training
      forward only shows the model's greedy choices along that answer, so a training example
      counts as correct when the greedy prediction is ``output_texts[0]``; predicting another
      valid answer counts as wrong in the curriculum window.  This is conservative (it can
      only delay an advance) and rare: the generator yields several answers for well under
      1% of examples.
    * Held-out evaluation (:mod:`megaproc.task.heldout`, ``python -m megaproc.evaluate``)
      checks every valid answer — one teacher-forced row per answer — and counts the example
      as correct when the greedy prediction equals any of them (at most one can match,
      because greedy decoding is deterministic and no answer is a token-prefix of another).
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

from megaproc.data.batch import IGNORE_INDEX


def teacher_forced_correct(logits: torch.Tensor, labels: torch.Tensor,
                           word_mask: torch.Tensor) -> torch.Tensor:
    """Per-row bool [B]: greedy prediction equals the label at every ``word_mask`` position.

    ``logits`` [B, T, V] come from the teacher-forced forward, ``labels`` [B, T] are the next
    tokens and ``word_mask`` [B, T] marks the answer tokens.  Rows without any answer token
    are False.
    """
    word_mask = word_mask.to(labels.device).bool() & (labels != IGNORE_INDEX)
    predicted = logits.argmax(dim=-1)
    wrong = (predicted != labels) & word_mask
    return word_mask.any(dim=1) & ~wrong.any(dim=1)


def answer_token_loss(logits: torch.Tensor, labels: torch.Tensor,
                      word_mask: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Per-row ``(sum of cross entropy over answer tokens, number of answer tokens)`` (float64)."""
    word_mask = word_mask.to(labels.device).bool() & (labels != IGNORE_INDEX)
    per_token = F.cross_entropy(logits.float().reshape(-1, logits.size(-1)), labels.reshape(-1),
                                ignore_index=IGNORE_INDEX, reduction="none").view(labels.shape)
    sums = (per_token.double() * word_mask).sum(dim=1)
    return sums, word_mask.sum(dim=1).double()


def text_matches_answer(decoded: str, answer: str) -> bool:
    """True when ``decoded`` text starts with the full word ``answer``.

    The character after the answer (if any) must not continue a word: ``" 12"`` does not
    match ``" 123"``.  Answers ending in punctuation (``" wumpy."``) match any continuation.
    Used to check free-running generations (tests, analysis) against ``output_texts``.
    """
    if not answer or not decoded.startswith(answer):
        return False
    if len(decoded) == len(answer) or not answer[-1].isalnum():
        return True
    return not decoded[len(answer)].isalnum()
