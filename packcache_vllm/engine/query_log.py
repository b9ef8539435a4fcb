"""The last layer's queries of each request's newest generated tokens, by logical index, for a
selector that ranks a frame's tokens by the attention its successor paid to them (``salience``).

The model hands the runner every forward's rotated queries (``record_last_layer_queries``); the
runner files each batch row's under its request (``record``). When a frame's successor completes,
the runner reads the successor's F queries (``take``) and recomputes their softmax over the
request's cache (``attention_probs``); each plan then says from which logical index on
queries are still needed (``drop_before``), so a request holds about one frame of queries.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch


@dataclass
class QueryRows:
    """One request's recorded queries: rows [0, length) of ``buffer`` ([capacity, H, hd]) are
    the queries at logical indices [start, start + length)."""

    start: int
    length: int
    buffer: torch.Tensor

    @property
    def end(self) -> int:
        return self.start + self.length


class QueryLog:
    def __init__(self) -> None:
        self.rows: dict[str, QueryRows] = {}

    def record(self, request_id: str, start: int, queries: torch.Tensor) -> None:
        """queries: [n, H, hd], the request's queries at logical indices [start, start + n).
        A gap since the last record (the request was recomputed) starts the log anew."""
        entry = self.rows.get(request_id)
        if entry is None or entry.end != start:
            entry = QueryRows(start, 0, queries.new_empty((0, *queries.shape[1:])))
            self.rows[request_id] = entry
        needed = entry.length + queries.shape[0]
        if needed > entry.buffer.shape[0]:  # grow by doubling: amortised O(1) per row
            grown = queries.new_empty((max(needed, 2 * entry.buffer.shape[0]), *queries.shape[1:]))
            grown[: entry.length] = entry.buffer[: entry.length]
            entry.buffer = grown
        entry.buffer[entry.length : needed] = queries
        entry.length = needed

    def take(self, request_id: str, start: int, count: int) -> torch.Tensor:
        """[count, H, hd]: the queries at logical indices [start, start + count) (a view).
        ValueError naming the request and the range when they were not recorded."""
        entry = self.rows.get(request_id)
        if entry is None or start < entry.start or start + count > entry.end:
            held = "none" if entry is None else f"[{entry.start}, {entry.end})"
            raise ValueError(
                f"request {request_id}: the last layer's queries at logical indices [{start}, "
                f"{start + count}) were not recorded (held: {held})"
            )
        offset = start - entry.start
        return entry.buffer[offset : offset + count]

    def drop_before(self, request_id: str, index: int) -> None:
        """Forget the request's queries at logical indices < ``index``."""
        entry = self.rows.get(request_id)
        if entry is None or index <= entry.start:
            return
        drop = min(index, entry.end) - entry.start
        kept = entry.length - drop
        entry.buffer[:kept] = entry.buffer[drop : entry.length].clone()
        entry.start, entry.length = entry.start + drop, kept

    def forget(self, request_id: str) -> None:
        self.rows.pop(request_id, None)


def attention_probs(queries: torch.Tensor, keys: torch.Tensor, first_query: int) -> torch.Tensor:
    """Softmax attention probabilities with GQA (query head h reads KV head h // (H / KV)).

    queries: [N, H, hd] rotated, at physical positions first_query + i; keys: [P, KV, hd]
    rotated, P = first_query + N; query i sees keys [0, first_query + i]. Returns [H, N, P]
    float32, scaled by hd^-1/2 as the model's attention is.
    """
    num_queries, heads, head_dim = queries.shape
    keys = keys.repeat_interleave(heads // keys.shape[1], dim=1)  # [P, H, hd]
    scores = torch.einsum("nhd,phd->hnp", queries.float(), keys.float()) * head_dim**-0.5
    query_at = first_query + torch.arange(num_queries, device=queries.device)
    visible = torch.arange(keys.shape[0], device=queries.device)[None, :] <= query_at[:, None]
    return scores.masked_fill(~visible, float("-inf")).softmax(dim=-1)


SCORES_PER_CHUNK = 1 << 24  # float32 scores held at once by ``attention_mass`` (64 MiB)


def attention_mass(
    queries: torch.Tensor,
    keys: torch.Tensor,
    first_query: int,
    columns: torch.Tensor,
    scores_per_chunk: int = SCORES_PER_CHUNK,
) -> torch.Tensor:
    """The attention probability the queries pay to each key of ``columns``, summed over the
    queries and averaged over heads: [len(columns)] float32. Shapes as ``attention_probs``;
    columns: [C] int64 key positions. Queries go in chunks of at most ``scores_per_chunk``
    scores (a Lumos-1 frame is ~4,000 queries over tens of thousands of keys)."""
    num_queries, heads, _ = queries.shape
    rows = max(1, scores_per_chunk // (heads * keys.shape[0]))
    total = torch.zeros(heads, columns.numel(), dtype=torch.float32, device=queries.device)
    for start in range(0, num_queries, rows):
        end = min(start + rows, num_queries)
        probs = attention_probs(queries[start:end], keys[: first_query + end], first_query + start)
        visible = columns < first_query + end  # later keys: no probability from this chunk
        total[:, visible] += probs[:, :, columns[visible]].sum(dim=1)
    return total.mean(dim=0)
