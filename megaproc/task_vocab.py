"""The task vocabulary (``task.tokenizer: symbolic``): one token per symbol of graph search.

The symbolic graph-search generator (:mod:`megaproc.synthetic.graph_search`) writes a prompt as
space-separated integers — vertex ids ``1..V`` and the specials ``PATH = V+1``, ``EDGE = V+2``,
``PAD = V+3``, ``QUERY = V+4`` with ``V = (max_input_size - 5) // 3`` — and each answer as
``" <vertex id>"``.  A byte-level BPE splits some of those ids into two tokens (the built-in
tokenizer has no merge for ``" 6"``, ``" 7"``, ``" 9"``), so an answer is not always one
prediction and every prompt is longer than its symbols.  The task vocabulary is how the
authors' search models see the task: a word-level tokenizer whose token ``i`` is the symbol
``str(i)`` for every ``i`` in ``0..V+4`` (token id == symbolic id, so a model's logits are
directly over vertices; id 0 is unused by the generator and kept so the ids line up), then
``<eos>``, ``<pad>`` and ``<unk>``.  Words are split on whitespace, so ``"8 3 5"`` is three
tokens and the answer ``" 5"`` one.  There is no bos (the symbolic prompt starts with its first
edge, as upstream's inputs do).

It is an ordinary :class:`~transformers.PreTrainedTokenizerFast`: saved with every checkpoint and
export (``save_pretrained``) and read back by :func:`megaproc.tokenizer.load_tokenizer` from that
directory, so evaluation and export need nothing else.  Decoding joins the words with spaces, so
a token never continues the previous word (see
:func:`megaproc.eval.answer_correctness.word_continuation_table`, which decodes each token after
another one for exactly this reason).

Only the pre-pretraining run uses it: the splits (``eval/test/mixin.jsonl``) are text, encoded by
whichever run reads them — the pretraining run that follows uses the corpus tokenizer and takes
the pre-pretrained ``[attn, ffn, ln]`` weights with fresh embeddings
(``model.embedding_strategy: retain``).
"""

from __future__ import annotations

from tokenizers import Tokenizer, models, pre_tokenizers
from transformers import PreTrainedTokenizerFast

from megaproc.synthetic import GraphSearchGenerator

TASK_TOKENIZERS = ("data", "symbolic")
EOS, PAD, UNK = "<eos>", "<pad>", "<unk>"


def symbolic_vocab_size(max_input_size: int) -> int:
    """Number of symbolic ids ``0..V+4`` of the generator for ``max_input_size`` (``V + 5``)."""
    return GraphSearchGenerator(max_input_size, 1, 0, natural_language=False).vocab_size


def symbolic_tokenizer(max_input_size: int) -> PreTrainedTokenizerFast:
    """The word-level task tokenizer for symbolic graph search with ``task.max_input_size``.

    Token ``i`` is the word ``str(i)`` for ``i < symbolic_vocab_size(max_input_size)``; then
    ``<eos>``, ``<pad>``, ``<unk>`` (see the module docstring).
    """
    size = symbolic_vocab_size(max_input_size)
    vocab = {str(i): i for i in range(size)}
    for offset, special in enumerate((EOS, PAD, UNK)):
        vocab[special] = size + offset
    backend = Tokenizer(models.WordLevel(vocab, unk_token=UNK))
    # Whitespace split: the answer " 5" is the single word "5" (the leading space only marks
    # a word boundary, as in the prompt).
    backend.pre_tokenizer = pre_tokenizers.WhitespaceSplit()
    return PreTrainedTokenizerFast(tokenizer_object=backend, eos_token=EOS, pad_token=PAD,
                                   unk_token=UNK)


def task_tokenizer(task_cfg) -> PreTrainedTokenizerFast | None:
    """The run's tokenizer chosen by ``task.tokenizer``: the task vocabulary for ``symbolic``,
    None for ``data`` (the run uses ``data.tokenizer`` or the built-in one)."""
    if task_cfg.tokenizer == "symbolic":
        return symbolic_tokenizer(task_cfg.max_input_size)
    return None
