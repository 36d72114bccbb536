"""Loss and throughput accumulation between log steps, reduced over ranks on demand."""

from __future__ import annotations

import torch

from megaproc import distributed as dist_utils


class LossMeter:
    """Sums of token losses and counts, overall and per data source."""

    def __init__(self, num_sources: int, device: torch.device):
        self.num_sources = max(1, num_sources)
        self.device = device
        # Tokens this rank trained on since the start of the run (restored on resume: the
        # global total goes to rank 0, the others start from 0, so the sum stays right).
        self.cumulative_tokens = 0.0
        self.reset()

    def reset(self) -> None:
        """Start a new accumulation window."""
        # [loss_sum, token_count, micro_batches, per-source loss sums..., per-source token counts...]
        self.sums = torch.zeros(3 + 2 * self.num_sources, dtype=torch.float64, device=self.device)

    def add(self, per_token_loss: torch.Tensor, mask: torch.Tensor, source: torch.Tensor) -> None:
        """Account one micro-batch (``per_token_loss`` and ``mask`` are [B, T])."""
        masked = (per_token_loss.detach().double() * mask)
        per_sample_loss = masked.sum(dim=1)
        per_sample_tokens = mask.sum(dim=1).double()
        self.sums[0] += per_sample_loss.sum()
        self.sums[1] += per_sample_tokens.sum()
        self.cumulative_tokens += float(mask.sum())
        self.sums[2] += 1
        src = source.to(self.device).clamp(0, self.num_sources - 1)
        self.sums[3:3 + self.num_sources].index_add_(0, src, per_sample_loss)
        self.sums[3 + self.num_sources:].index_add_(0, src, per_sample_tokens)

    def reduce(self) -> dict:
        """Sum over ranks (collective) and reset.

        Returns the window's mean ``loss`` and ``tokens``, the run's ``total_tokens`` and the
        per-source mean losses (None for a source absent from the window).
        """
        vector = torch.cat([self.sums, torch.tensor([self.cumulative_tokens], dtype=torch.float64,
                                                    device=self.device)])
        totals = dist_utils.all_reduce_sum(vector).cpu()
        self.reset()
        n = self.num_sources
        loss = (totals[0] / totals[1].clamp(min=1)).item()
        per_source = [(totals[3 + j] / totals[3 + n + j]).item() if totals[3 + n + j] > 0 else None
                      for j in range(n)]
        return {"loss": loss, "tokens": int(totals[1].item()), "total_tokens": int(totals[-1].item()),
                "per_source": per_source}

    def total_tokens(self) -> int:
        """Tokens trained on by all ranks since the start of the run (collective)."""
        vector = torch.tensor([self.cumulative_tokens], dtype=torch.float64, device=self.device)
        return int(dist_utils.all_reduce_sum(vector).item())

    def restore_total_tokens(self, total: int) -> None:
        """Set the run total after a resume (kept on rank 0 only)."""
        self.cumulative_tokens = float(total) if dist_utils.is_main() else 0.0
