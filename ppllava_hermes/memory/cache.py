"""KV storage for a stream: a transformers ``Cache`` whose layers also remember what each entry is.

Storage only: tensors plus, per layer and per entry, its logical position(s), frame id, kind and
count (how many original tokens the entry stands for after merging). What to keep, fold or drop is a
policy's business (``memory/policy.py`` and one file per policy). This module knows nothing about
video, pooling or any model family: it sees keys, values, positions and token metadata.

Shapes: keys / values ``(batch, kv_heads, seq_len, head_dim)``; positions ``(pos_dims, seq_len)``
with ``pos_dims`` 1 (1-D RoPE) or 3 (M-RoPE t/h/w); frame_ids, kinds, counts, segments, uids
``(seq_len,)``.

Two bookkeeping fields are assigned by :meth:`MemoryCache.commit`, not by the caller: ``segments``
(which commit an entry came from: the system prompt, one visual chunk, one text run; re-indexing keeps
a segment's internal position structure) and ``uids`` (the entry's index in the whole stream, the same
in every layer, so that layers holding different entries can be lined up).

The inherited ``Cache`` API, and what it does to the metadata:

* ``crop(-n)`` and ``reset()`` keep keys, values and metadata in step (the last ``n`` entries dropped;
  everything emptied). ``crop`` with a positive value raises ``ValueError`` (use :meth:`MemoryCache.truncate`).
* ``model.generate(past_key_values=memory_cache)`` (or ``cache=`` from transformers 5.24) is refused
  with ``NotImplementedError``: generate commits no metadata and computes positions from the physical
  length (or stored ``rope_deltas``), which are not the stream's positions once entries were evicted or
  re-indexed. Use ``StreamingSession.ask`` or a prefill/decode loop that passes explicit positions and
  calls :meth:`MemoryCache.commit` after each forward; for plain generation, transformers' ``DynamicCache``.
  Independently of generate, a forward into a layer that still holds uncommitted entries of an earlier
  forward raises ``RuntimeError``.
* batch-axis methods (``reorder_cache``, ``batch_select_indices``, ``batch_repeat_interleave``) leave the
  metadata alone: it describes the sequence axis, shared by every row of the batch.
"""

from __future__ import annotations

from dataclasses import dataclass
from enum import IntEnum

import torch
from transformers.cache_utils import Cache, DynamicLayer


class TokenKind(IntEnum):
    """What a cache entry is; policies treat kinds differently (system entries are never evicted)."""

    SYSTEM = 0
    VISUAL = 1
    TEXT = 2
    ANCHOR = 3


@dataclass
class TokenMeta:
    """Metadata of a run of tokens, as given to :meth:`MemoryCache.commit`.

    Attributes:
        positions: ``(pos_dims, L)`` long, the RoPE positions the keys were rotated with.
        frame_ids: ``(L,)`` long, the stream frame index of visual tokens, -1 otherwise.
        kinds: ``(L,)`` long, :class:`TokenKind` values.
    """

    positions: torch.Tensor
    frame_ids: torch.Tensor
    kinds: torch.Tensor

    def __post_init__(self) -> None:
        n = self.positions.shape[-1]
        if self.positions.ndim != 2:
            raise ValueError(f"positions must be (pos_dims, L), got {tuple(self.positions.shape)}")
        if self.frame_ids.shape != (n,) or self.kinds.shape != (n,):
            raise ValueError(
                f"metadata lengths differ: positions {n}, frame_ids {tuple(self.frame_ids.shape)}, "
                f"kinds {tuple(self.kinds.shape)}"
            )

    def __len__(self) -> int:
        return self.positions.shape[-1]


class MemoryLayer(DynamicLayer):
    """One layer's keys and values plus per-entry metadata, kept aligned along the sequence axis."""

    def __init__(self, pos_dims: int = 1, **kwargs) -> None:
        super().__init__(**kwargs)
        self.pos_dims = pos_dims
        self.positions = torch.zeros(pos_dims, 0, dtype=torch.long)
        self.frame_ids = torch.zeros(0, dtype=torch.long)
        self.kinds = torch.zeros(0, dtype=torch.long)
        self.counts = torch.zeros(0, dtype=torch.float32)
        self.segments = torch.zeros(0, dtype=torch.long)
        self.uids = torch.zeros(0, dtype=torch.long)

    # ---- metadata -------------------------------------------------------------------------------
    def append_meta(self, meta: TokenMeta, segment: int = 0, first_uid: int = 0) -> None:
        n = len(meta)
        self.positions = torch.cat([self.positions, meta.positions.to(self.positions)], dim=1)
        self.frame_ids = torch.cat([self.frame_ids, meta.frame_ids.to(self.frame_ids)])
        self.kinds = torch.cat([self.kinds, meta.kinds.to(self.kinds)])
        self.counts = torch.cat([self.counts, torch.ones(n, dtype=self.counts.dtype)])
        self.segments = torch.cat([self.segments, torch.full((n,), segment, dtype=torch.long)])
        self.uids = torch.cat([self.uids, torch.arange(first_uid, first_uid + n, dtype=torch.long)])

    def select(self, index: torch.Tensor) -> None:
        """Keep only the entries at ``index`` (1-D long, in the order given)."""
        index = index.to(torch.long)
        if self.is_initialized and self.keys.numel() > 0:
            dev_index = index.to(self.keys.device)
            self.keys = self.keys.index_select(-2, dev_index)
            self.values = self.values.index_select(-2, dev_index)
        self.positions = self.positions.index_select(1, index)
        self.frame_ids = self.frame_ids.index_select(0, index)
        self.kinds = self.kinds.index_select(0, index)
        self.counts = self.counts.index_select(0, index)
        self.segments = self.segments.index_select(0, index)
        self.uids = self.uids.index_select(0, index)

    def replace(
        self,
        keys: torch.Tensor,
        values: torch.Tensor,
        positions: torch.Tensor,
        frame_ids: torch.Tensor,
        kinds: torch.Tensor,
        counts: torch.Tensor,
        segments: torch.Tensor | None = None,
        uids: torch.Tensor | None = None,
    ) -> None:
        """Swap in a whole new content (used by policies that merge or fold entries).

        ``segments`` / ``uids`` may be left out only when the length does not change (they are kept).
        """
        n = keys.shape[-2]
        if not (values.shape[-2] == positions.shape[1] == frame_ids.shape[0] == kinds.shape[0] == counts.shape[0] == n):
            raise ValueError("replace(): keys, values and metadata must have the same length")
        if segments is None or uids is None:
            if n != len(self):
                raise ValueError("replace(): segments and uids are required when the length changes")
            segments = self.segments if segments is None else segments
            uids = self.uids if uids is None else uids
        if segments.shape != (n,) or uids.shape != (n,):
            raise ValueError("replace(): segments and uids must have the same length as the keys")
        self.keys, self.values = keys, values
        self.positions, self.frame_ids, self.kinds, self.counts = positions, frame_ids, kinds, counts
        self.segments, self.uids = segments, uids

    def truncate(self, length: int) -> None:
        """Drop every entry after the first ``length`` (restores the state before a question)."""
        if self.is_initialized and self.keys.numel() > 0:
            self.keys = self.keys[..., :length, :]
            self.values = self.values[..., :length, :]
        self.positions = self.positions[:, :length]
        self.frame_ids = self.frame_ids[:length]
        self.kinds = self.kinds[:length]
        self.counts = self.counts[:length]
        self.segments = self.segments[:length]
        self.uids = self.uids[:length]

    def __len__(self) -> int:
        return self.frame_ids.shape[0]

    # ---- the inherited Cache layer API, kept in step with the metadata --------------------------
    def update(self, key_states: torch.Tensor, value_states: torch.Tensor, *args, **kwargs):
        """Append keys and values (``DynamicLayer.update``), after checking that the previous forward's
        entries were committed: a second forward on top of uncommitted entries (what ``generate`` and any
        loop without :meth:`MemoryCache.commit` do) would leave the metadata behind for good."""
        held = self.get_seq_length()
        if held != len(self):
            raise RuntimeError(
                f"MemoryCache.update: this layer holds {held - len(self)} entries of an earlier forward that were "
                "never committed; call MemoryCache.commit(meta) after each forward (model.generate() is not "
                "supported: use StreamingSession.ask or your own prefill/decode loop, or DynamicCache)"
            )
        return super().update(key_states, value_states, *args, **kwargs)

    def crop(self, tokens_to_remove: int) -> None:
        """Drop the last ``-tokens_to_remove`` entries, keys, values and metadata together (transformers'
        convention: a negative count). A positive value raises ``ValueError``: use :meth:`truncate` to
        cut to an absolute length."""
        if tokens_to_remove > 0:
            raise ValueError(
                f"MemoryLayer.crop({tokens_to_remove}): pass a negative number of entries to remove, or use "
                "MemoryCache.truncate(length) to keep the first `length` entries"
            )
        if tokens_to_remove == 0:
            return
        self.truncate(max(0, max(self.get_seq_length(), len(self)) - abs(int(tokens_to_remove))))

    def reset(self) -> None:
        """Empty the layer: keys, values and every metadata field (``DynamicLayer.reset`` would drop the
        keys and values only, or zero them in place in older transformers, and leave the metadata)."""
        self.keys = self.values = None
        self.is_initialized = False
        self.truncate(0)


class MemoryCache(Cache):
    """A list of :class:`MemoryLayer` usable as ``past_key_values`` by any transformers 5.x model.

    The model writes keys and values through ``update`` (already rotated); the caller then
    :meth:`commit`s the metadata of the tokens it just ran, which checks that every layer grew by
    exactly that many entries. All layers keep the same physical length, which attention masks need.
    """

    def __init__(self, num_layers: int, pos_dims: int = 1) -> None:
        if num_layers <= 0:
            raise ValueError(f"num_layers must be positive, got {num_layers}")
        if pos_dims not in (1, 3):
            raise ValueError(f"pos_dims must be 1 (RoPE) or 3 (M-RoPE), got {pos_dims}")
        super().__init__(layers=[MemoryLayer(pos_dims=pos_dims) for _ in range(num_layers)])
        self.pos_dims = pos_dims

    @property
    def num_layers(self) -> int:
        return len(self.layers)

    # transformers' generate() marks the cache it was given (``cache._is_user_defined = True``) before its
    # first forward: refusing there leaves the memory untouched.
    @property
    def _is_user_defined(self) -> bool:
        return False

    @_is_user_defined.setter
    def _is_user_defined(self, value: bool) -> None:
        raise NotImplementedError(
            "MemoryCache does not support model.generate(): generate commits no metadata and computes positions "
            "from the cache's physical length, which are wrong once entries are evicted or re-indexed. Use "
            "StreamingSession.ask(), or a prefill/decode loop with explicit position_ids that calls "
            "MemoryCache.commit() after each forward; for plain generation use transformers' DynamicCache."
        )

    def crop(self, tokens_to_remove: int) -> None:
        """Drop the last ``-tokens_to_remove`` entries of every layer, metadata included (see
        :meth:`MemoryLayer.crop`; a positive value raises ``ValueError``: use :meth:`truncate`)."""
        for layer in self.layers:
            layer.crop(tokens_to_remove)

    def reset(self) -> None:
        """Empty every layer, metadata included. The memory policy's own state (e.g. its system-prompt
        length from ``setup``) is the caller's to reset."""
        for layer in self.layers:
            layer.reset()

    def commit(self, meta: TokenMeta) -> None:
        """Record the metadata of the ``len(meta)`` tokens the model just appended to every layer."""
        if meta.positions.shape[0] != self.pos_dims:
            raise ValueError(f"positions have {meta.positions.shape[0]} dims, cache expects {self.pos_dims}")
        for i, layer in enumerate(self.layers):
            if layer.get_seq_length() != len(layer) + len(meta):
                raise RuntimeError(
                    f"layer {i} holds {layer.get_seq_length()} entries but metadata for "
                    f"{len(layer) + len(meta)}: the model's forward and commit() are out of step"
                )
        # One commit = one segment; ids are computed from what is held, so truncate() rewinds them too.
        segment = max((int(layer.segments.max()) + 1 if len(layer) else 0) for layer in self.layers)
        first_uid = max((int(layer.uids.max()) + 1 if len(layer) else 0) for layer in self.layers)
        for layer in self.layers:
            layer.append_meta(meta, segment, first_uid)

    def physical_length(self) -> int:
        lengths = {len(layer) for layer in self.layers}
        if len(lengths) != 1:
            raise RuntimeError(f"layers have different lengths {sorted(lengths)}; attention masks need equal lengths")
        return lengths.pop()

    def truncate(self, length: int) -> None:
        for layer in self.layers:
            layer.truncate(length)

    def count(self, kind: TokenKind, layer_idx: int = 0) -> int:
        return int((self.layers[layer_idx].kinds == int(kind)).sum())

    def kv_bytes(self) -> int:
        """Bytes held by keys and values over all layers (metadata excluded)."""
        total = 0
        for layer in self.layers:
            if layer.is_initialized and layer.keys is not None:
                total += layer.keys.numel() * layer.keys.element_size()
                total += layer.values.numel() * layer.values.element_size()
        return total

    def state(self) -> list[dict[str, torch.Tensor]]:
        """A detached copy of everything the memory holds, for equality checks and snapshots."""
        out = []
        for layer in self.layers:
            entry = {
                "positions": layer.positions.clone(),
                "frame_ids": layer.frame_ids.clone(),
                "kinds": layer.kinds.clone(),
                "counts": layer.counts.clone(),
                "segments": layer.segments.clone(),
                "uids": layer.uids.clone(),
            }
            if layer.is_initialized and layer.keys is not None:
                entry["keys"] = layer.keys.detach().clone()
                entry["values"] = layer.values.detach().clone()
            out.append(entry)
        return out

    def max_position(self) -> int:
        """Largest logical position held anywhere (-1 when empty)."""
        return max((int(layer.positions.max()) if len(layer) else -1) for layer in self.layers)
