"""SharePrefill's online sharing (docs/method.md, step 4), batched over heads and batch elements.

State lives for one forward pass: per (batch element, cluster) the pivotal head's exact pattern,
its pooled profiles, whether its own vertical-slash mask already covers tau_fb of its mass, and
where it came from. Decisions for a whole layer are tensor operations; no per-head Python loop.
The state tensors keep their storage for a given geometry (reset and updates write in place), so
CUDA graphs of the decision step (which reads it through ``share_state``; the sharing test itself
is ``kernels.head_decisions``) and of ``record_pivotals`` (analysis/method/decision_graphs.py) read
and write the current state on every replay. Both take the layer as tensors (its row of the cluster
table, its number as a 0-d tensor), so one graph per geometry serves every layer.

A model sharded over several GPUs keeps one copy of the state per GPU its layers run on: the first
layer on another GPU than the previous one takes the state over (one device-to-device copy per GPU
boundary and forward pass), so a head on GPU 1 shares from a pivotal on GPU 0 as on one GPU.
"""
from __future__ import annotations

import torch

from ... import kernels
from ...kernels.reference import PivotalStore, ShareState


def cluster_table(lookup, num_layers: int, num_heads: int) -> torch.Tensor:
    """``[L, H]`` int64: the shared cluster of each head, -1 for heads not shared or not in the
    lookup (a head missing from the lookup is simply unclustered). Cluster ids are renumbered
    0..C-1 over shared clusters."""
    table = torch.full((num_layers, num_heads), -1, dtype=torch.long)
    if lookup is None:
        return table
    for new_id, cluster in enumerate(lookup.shared_clusters):
        for layer, head in cluster.heads:
            if layer < num_layers and head < num_heads:
                table[layer, head] = new_id
    return table


class SharingState:
    """Pivotal heads and their patterns for one forward pass."""

    def __init__(self, table: torch.Tensor):
        self.table = table  # [L, H]
        self.num_clusters = int(table.max().item()) + 1 if table.numel() else 0
        self._shape = None  # (batch, nqb, nkb) of the state tensors
        self._stores: dict = {}  # device -> the state tensors there (PivotalStore._fields)
        self._device = None  # the device whose tensors hold the current state (self.exists, ...)
        self.generation = 0
        self._on_device: dict = {}  # device -> (table [L, H], layers [L])
        self._clustered = (table >= 0).any(dim=1).tolist()  # per layer, on the host

    def _tables(self, device) -> tuple[torch.Tensor, torch.Tensor]:
        """The cluster table and the layer numbers, moved to ``device`` once."""
        if device not in self._on_device:
            self._on_device[device] = (self.table.to(device), torch.arange(self.table.shape[0], device=device))
        return self._on_device[device]

    def clustered(self, layer: int) -> bool:
        """Whether ``layer`` has a head in a shared cluster (read on the host, no sync): a layer
        without one has no pivotal head and shares nothing, so it needs no block-mass map or record."""
        return layer < len(self._clustered) and self._clustered[layer]

    def cluster_row(self, layer: int, device) -> torch.Tensor:
        """``[H]``: the shared cluster of each head of ``layer`` (-1: none), on ``device``."""
        return self._tables(device)[0][layer]

    def layer_index(self, layer: int, device) -> torch.Tensor:
        """0-d int64 tensor holding ``layer``, on ``device`` (a view of a cached tensor: no copy
        from the host, so no sync)."""
        return self._tables(device)[1][layer]

    def reset(self, batch: int, nqb: int, nkb: int, device) -> None:
        """Empty state for a new forward pass, on ``device``; the tensors of one geometry are
        reused in place (on every device)."""
        if (batch, nqb, nkb) != self._shape:
            self._shape = (batch, nqb, nkb)
            self._stores = {}
            self.generation += 1  # new storage: decision graphs recorded against the old one are stale
        self._use(device)
        for t in (self.exists, self.vs_enough, self.pattern, self.v, self.s):
            t.zero_()
        self.source.fill_(-1)

    def ensure(self, batch: int, nqb: int, nkb: int, device) -> None:
        """The state of this geometry on ``device``, before a layer there: a layer on another
        device than the previous one takes the state over (copied in place)."""
        if self._shape != (batch, nqb, nkb):
            self.reset(batch, nqb, nkb, device)
        elif device != self._device:
            previous = self._stores[self._device]
            self._use(device)
            for name in PivotalStore._fields:
                getattr(self, name).copy_(previous[name])

    def _use(self, device) -> None:
        """Make ``device``'s state tensors the current ones (allocated once per geometry)."""
        store = self._stores.get(device)
        if store is None:
            batch, nqb, nkb = self._shape
            c = max(self.num_clusters, 1)
            store = self._stores[device] = {
                "exists": torch.zeros(batch, c, dtype=torch.bool, device=device),
                "vs_enough": torch.zeros(batch, c, dtype=torch.bool, device=device),
                "pattern": torch.zeros(batch, c, nqb, nkb, dtype=torch.bool, device=device),
                "v": torch.zeros(batch, c, nkb, device=device),
                "s": torch.zeros(batch, c, nkb, device=device),
                "source": torch.full((batch, c, 2), -1, dtype=torch.long, device=device)}
        self._device = device
        for name, tensor in store.items():
            setattr(self, name, tensor)

    def share_state(self, cluster: torch.Tensor, tau_s: float) -> ShareState:
        """The current state as the decisions read it, for the layer whose row of the table is
        ``cluster`` (``cluster_row``)."""
        return ShareState(cluster, self.exists, self.vs_enough, self.v, self.s, self.source, tau_s)

    def patterns_of(self, cid: torch.Tensor) -> torch.Tensor:
        """``[B, H, nqb, nkb]``: the pattern of each head's cluster slot ``cid`` ``[B, H]``."""
        b, h = cid.shape
        return self.pattern.gather(1, cid[:, :, None, None].expand(b, h, *self.pattern.shape[2:]))

    def record_pivotals(self, cluster: torch.Tensor, layer: torch.Tensor, pivotal: torch.Tensor,
                        block_mass: torch.Tensor, own_vs_mask: torch.Tensor, v_blocks: torch.Tensor,
                        s_blocks: torch.Tensor, gamma: float, tau_fb: float,
                        fallback_needs_sparser: bool = False) -> None:
        """Store the pivotal heads' exact patterns (coverage at gamma of their block-mass maps).

        ``cluster`` ``[H]``: the layer's row of the table (``cluster_row``); ``layer``: its number,
        a 0-d int64 tensor (``layer_index``), stored as the source of the pivotal's pattern;
        ``pivotal`` ``[B, H]`` bool; ``block_mass`` and ``own_vs_mask`` ``[B, H, nqb, nkb]``;
        pooled profiles ``[B, H, nkb]``. Writes the state in place, no host sync
        (``kernels.record_pivotals``: two launches on the GPU).

        A cluster falls back to vertical-slash when the pivotal's own vertical-slash mask covers
        ``tau_fb`` of its mass (the paper) and, with ``fallback_needs_sparser``, also keeps no more
        blocks than the pivotal's pattern (ours)."""
        store = PivotalStore(*(getattr(self, name) for name in PivotalStore._fields))
        kernels.record_pivotals(store, cluster, layer, pivotal, block_mass, own_vs_mask, v_blocks, s_blocks,
                                gamma, tau_fb, fallback_needs_sparser)
