"""Document masking for packed samples: ``data.reset_position_ids``, ``data.reset_attention_mask``
and ``data.eod_mask_loss``, with Megatron-LM's semantics.

A sample of an indexed dataset is ``seq_len + 1`` consecutive tokens of the corpus, so it spans
several documents, each ending with the EOD token (the tokenizer's EOS, which
``data_tools.preprocess --append-eod`` and the built-in corpus append).  Megatron-LM
(``megatron/core/datasets/gpt_dataset.py``, ``_get_ltor_masks_and_position_ids``, read in the
installed megatron-core 0.16.1) computes on the model's *inputs* (``tokens[:-1]``):

- a document boundary falls right *after* an EOD: the EOD belongs to the document it ends, the
  next input starts a new one;
- ``reset_position_ids``: positions restart at 0 after every EOD;
- ``reset_attention_mask``: a token attends (causally) only to the tokens of its own document;
- ``eod_mask_loss``: no loss at the positions whose *input* is an EOD (Megatron's
  ``loss_mask[tokens == eod] = 0``), i.e. on the prediction *made from* the EOD, the first token
  of the next document, which nothing in the EOD's own document can predict.  The EOD as a
  *target* (a document's last token predicting the document's end) still trains.  The issue
  asked for "no loss on EOD targets"; we follow Megatron.

Padding (the batch's right padding, ``attention_mask`` 0) is no document: pads form one segment
of their own (:data:`PAD_DOCUMENT`), so they never see a real token nor a real token them, and
a pad id equal to the EOD id is harmless (EODs are looked for among real tokens only).

:func:`document_masking` builds the :class:`DocumentMasking` of a run (None when all three
switches are off: then nothing here runs and a batch is exactly what it was);
:meth:`DocumentMasking.apply` (called by :func:`megaproc.data.batch.collate`) adds to a batch
``position_ids`` [B, T] (``reset_position_ids``) and ``document_ids`` [B, T]
(``reset_attention_mask``; 0, 1, ... along each row, :data:`PAD_DOCUMENT` on padding), and sets
the labels of EOD inputs to ``IGNORE_INDEX`` (``eod_mask_loss``: every loss, the sliced head's
positions and every metric then leave them out).  How the ids reach each model family's
attention (a 4-D block mask, or flash attention's packed sequences) is the model side's
business: :mod:`megaproc.models.document_attention`.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from megaproc.data.batch import IGNORE_INDEX
from megaproc.errors import ConfigError

PAD_DOCUMENT = -1
# The data section's switches (megaproc.config.DataConfig).
DATA_SWITCHES = ("reset_position_ids", "reset_attention_mask", "eod_mask_loss")
# The batch keys the model forward reads besides input_ids and attention_mask.
DOCUMENT_INPUT_KEYS = ("position_ids", "document_ids")


def eod_inputs(input_ids: torch.Tensor, attention_mask: torch.Tensor, eod_id: int) -> torch.Tensor:
    """Bool [B, T]: real (not padding) input positions holding the EOD token."""
    return (input_ids == eod_id) & attention_mask.bool()


def document_ids(eod: torch.Tensor, attention_mask: torch.Tensor) -> torch.Tensor:
    """Int64 [B, T]: the document index of every input along its row (0, 1, ...), a new
    document starting right after each EOD of ``eod`` [B, T]; :data:`PAD_DOCUMENT` on padding."""
    eod = eod.long()
    ids = eod.cumsum(dim=1) - eod  # exclusive count: the EOD stays in the document it ends
    return ids.masked_fill(~attention_mask.bool(), PAD_DOCUMENT)


def segment_position_ids(segments: torch.Tensor) -> torch.Tensor:
    """Int64 [B, T]: each position's offset from the start of its segment (a run of equal ids
    along the row), i.e. positions that restart at 0 wherever the segment id changes."""
    width = segments.shape[1]
    index = torch.arange(width, device=segments.device).expand_as(segments)
    starts = torch.ones_like(segments, dtype=torch.bool)
    starts[:, 1:] = segments[:, 1:] != segments[:, :-1]
    start_index = torch.where(starts, index, torch.zeros_like(index)).cummax(dim=1).values
    return index - start_index


@dataclass(frozen=True)
class DocumentMasking:
    """The switches of a run (or of ``megaproc.evaluate``) and the EOD id they split on."""

    eod_id: int
    reset_position_ids: bool = False
    reset_attention_mask: bool = False
    eod_mask_loss: bool = False

    def apply(self, batch: dict) -> dict:
        """Add ``position_ids`` / ``document_ids`` to a collated batch and drop the loss of EOD
        inputs, as switched on (see the module docstring); returns the batch."""
        attention = batch["attention_mask"]
        eod = eod_inputs(batch["input_ids"], attention, self.eod_id)
        if self.reset_position_ids or self.reset_attention_mask:
            documents = document_ids(eod, attention)
            if self.reset_position_ids:
                batch["position_ids"] = segment_position_ids(documents)
            if self.reset_attention_mask:
                batch["document_ids"] = documents
        if self.eod_mask_loss:
            batch["labels"] = batch["labels"].masked_fill(eod, IGNORE_INDEX)
        return batch


def document_masking(tokenizer, reset_position_ids: bool = False,
                     reset_attention_mask: bool = False, eod_mask_loss: bool = False, *,
                     what: str) -> DocumentMasking | None:
    """The :class:`DocumentMasking` of the switches, splitting on ``tokenizer``'s EOS id; None
    when every switch is off.  A tokenizer without an EOS token is refused (``what`` names
    the switches in the one-line error)."""
    if not (reset_position_ids or reset_attention_mask or eod_mask_loss):
        return None
    eod_id = getattr(tokenizer, "eos_token_id", None)
    if eod_id is None:
        raise ConfigError(f"{what}: document masking needs a tokenizer with an EOS token (the "
                          "EOD that ends every document); this tokenizer has none")
    return DocumentMasking(int(eod_id), bool(reset_position_ids), bool(reset_attention_mask),
                           bool(eod_mask_loss))


def data_switch_keys(data_cfg) -> str:
    """The data section's document-masking keys that are on, quoted for a one-line error."""
    return " / ".join(f"'data.{key}'" for key in DATA_SWITCHES if getattr(data_cfg, key, False))


def data_document_masking(data_cfg, tokenizer) -> DocumentMasking | None:
    """:func:`document_masking` of a run's ``data`` section."""
    switches = {key: bool(getattr(data_cfg, key, False)) for key in DATA_SWITCHES}
    return document_masking(tokenizer, **switches,
                            what=f"config key {data_switch_keys(data_cfg)}")


def document_inputs(batch: dict, device) -> dict[str, torch.Tensor]:
    """The batch's document keys (:data:`DOCUMENT_INPUT_KEYS` present) on ``device``: the
    keyword arguments :func:`megaproc.models.sliced_head.forward_logits` takes."""
    return {key: batch[key].to(device) for key in DOCUMENT_INPUT_KEYS if key in batch}
