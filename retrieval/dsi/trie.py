"""Docid tries as arrays, and the logits processor that decodes only docids.

Generative retrieval (DSI) decodes a document id token by token; a beam
must never leave the set of valid ids. `Trie.from_sequences` turns the ids'
token sequences (EOS appended) into CSR arrays, and `Trie.constraint()`
gives a `rosetta.decoding.processors` processor that, at every step, masks
every token that is not a child of the row's current trie node. EOS is an
edge like any other, present only where a complete id ends, so an id that
is a prefix of another (naive '12' and '123') still works.

Layout (host numpy, copied to the device once by `constraint()`)::

    ids  [5, 7], [5, 8], [6]            (EOS = 1 appended to each)
    node 0 = root; nodes are numbered breadth-first, so the child of edge e
    is node e + 1 and the children of a node are one sorted slice:
    offsets      [0, 2, 4, 5, 6, 7, 7, 7, 7, 7]   (num_nodes + 2 entries)
    edge_tokens  [5, 6,  7, 8,  1,  1, 1]
    children(0) = edge_tokens[0:2] = [5, 6] -> nodes 1, 2
    children(1) = edge_tokens[2:4] = [7, 8] -> nodes 3, 4
    children(2) = [1] (EOS of [6]) -> node 5; nodes 6, 7 end [5 7], [5 8]
    The extra last node (8 here, `sink`) has no children: a prefix that is
    not in the trie (a dead beam, a row past its EOS) walks into it.

Per step the processor walks each row's generated prefix from the root (the
decoding hook exposes the tokens so far, not per-beam state): a
`fori_loop` over the `step` tokens so far, then a mask of the node's
children. The first nodes breadth-first (the root and shallow nodes: the
wide ones) have a dense row of child ids, as many as fit in
DENSE_MAX_ENTRIES (all of a small trie): a lookup is one gather and the
mask one row. The other nodes search their CSR slice, 32 entries per round
(one round for fan-outs up to 32), and scatter their <= max_fanout child
tokens into the mask. Memory: two int32 per edge plus the 16 MB table --
1M ids of 4-8 tokens (5.6M nodes) take 43 MB + 16 MB.

Example::

    trie = Trie.from_sequences([[5, 7], [5, 8], [6]], eos_id=1)
    procs = (trie.constraint(model.cfg.vocab_size),)
    tokens, scores = decoding.beam_search(model, x, num_beams=4,
        max_decode_length=trie.max_length, processors=procs)
    # every row of tokens is one of [5 7 1], [5 8 1], [6 1 0]

Use max_decode_length >= trie.max_length (the longest id plus EOS): beam
search ends a hypothesis that reaches the maximum length without EOS.
"""

from __future__ import annotations

import dataclasses
from typing import Sequence

import jax
import jax.numpy as jnp
import numpy as np

from rosetta.decoding.processors import NEG_INF, DecodeState

# Dense child tables up to this many entries (16 MB of int32).
DENSE_MAX_ENTRIES = 1 << 22
# Entries probed at once per search round (see TrieConstraint.child).
SEARCH_WIDTH = 32


def search_rounds(max_fanout: int) -> int:
  """Rounds of the SEARCH_WIDTH-ary search that settle a slice of
  `max_fanout` entries (each leaves at most ceil(size / width) - 1)."""
  size, rounds = max_fanout, 0
  while size > 0:
    size, rounds = -(-size // SEARCH_WIDTH) - 1, rounds + 1
  return rounds


def _padded(sequences, eos_id: int, pad_id: int) -> np.ndarray:
  """(m, D + 1) int64: each id's tokens, then EOS, then -1."""
  if isinstance(sequences, np.ndarray) and sequences.ndim == 2:
    seqs = np.asarray(sequences, np.int64)
    lengths = np.where((seqs == pad_id).any(1), (seqs == pad_id).argmax(1),
                       seqs.shape[1])
    after = np.arange(seqs.shape[1])[None] >= lengths[:, None]
    if (seqs[after] != pad_id).any():
      row = int(np.nonzero((after & (seqs != pad_id)).any(1))[0][0])
      raise ValueError(f'Trie: sequence {row} has a token after padding '
                       f'({pad_id}): {seqs[row].tolist()}')
    seqs = np.where(after, -1, seqs)
  else:
    sequences = [list(s) for s in sequences]
    width = max((len(s) for s in sequences), default=0)
    seqs = np.full((len(sequences), width), -1, np.int64)
    lengths = np.zeros(len(sequences), np.int64)
    for i, s in enumerate(sequences):
      seqs[i, :len(s)] = s
      lengths[i] = len(s)
  if not len(seqs):
    raise ValueError('Trie: no sequences given')
  if (lengths == 0).any():
    raise ValueError(f'Trie: sequence {int(np.argmin(lengths))} is empty')
  inside = np.arange(seqs.shape[1])[None] < lengths[:, None]
  bad = inside & ((seqs < 0) | (seqs == eos_id) | (seqs == pad_id))
  if bad.any():
    row = int(np.nonzero(bad.any(1))[0][0])
    raise ValueError(
        f'Trie: sequence {row} = {seqs[row][inside[row]].tolist()} contains '
        f'EOS ({eos_id}), PAD ({pad_id}) or a negative token; docid tokens '
        f'must be other vocabulary ids')
  out = np.concatenate([seqs, np.full((len(seqs), 1), -1, np.int64)], 1)
  out[np.arange(len(seqs)), lengths] = eos_id
  return out


@dataclasses.dataclass(frozen=True)
class Trie:
  """CSR trie of docid token sequences (host side); see the module doc."""
  offsets: np.ndarray       # (num_nodes + 2,) int32
  edge_tokens: np.ndarray   # (num_edges,) int32; child of edge e = e + 1
  edge_parents: np.ndarray  # (num_edges,) int32, non-decreasing
  num_sequences: int
  max_length: int           # longest id + EOS
  max_fanout: int
  eos_id: int

  @classmethod
  def from_sequences(cls, sequences: Sequence[Sequence[int]] | np.ndarray,
                     *, eos_id: int = 1, pad_id: int = 0) -> 'Trie':
    """Builds the trie of `sequences` (token ids, no EOS; a 2-D array may
    be right-padded with pad_id). Duplicates raise (docids are unique).
    Vectorised: 1M ids of 8 tokens take a few seconds."""
    seqs = _padded(sequences, eos_id, pad_id)
    m, width = seqs.shape
    order = np.lexsort(seqs.T[::-1])
    s = seqs[order]
    diff = s[1:] != s[:-1]
    if m > 1 and not diff.any(1).all():
      i = int(np.nonzero(~diff.any(1))[0][0])
      raise ValueError(f'Trie: sequences {int(order[i])} and '
                       f'{int(order[i + 1])} are the same id '
                       f'{s[i][s[i] != -1].tolist()}')
    # Row i opens a new node at each depth from its first difference with
    # row i - 1 on (rows are sorted, so a node's rows are contiguous).
    first = np.concatenate([[0], diff.argmax(1)])
    valid = s != -1
    new = valid & (np.arange(width)[None] >= first[:, None])
    counts = new.sum(0)
    base = 1 + np.concatenate([[0], np.cumsum(counts)[:-1]])
    node = base[None] + np.cumsum(new, 0) - 1          # (m, width)
    parent = np.concatenate([np.zeros((m, 1), np.int64), node[:, :-1]], 1)
    num_edges = int(counts.sum())
    edge_tokens = np.empty(num_edges, np.int32)
    edge_parents = np.empty(num_edges, np.int32)
    edge_tokens[node[new] - 1] = s[new]
    edge_parents[node[new] - 1] = parent[new]
    num_nodes = num_edges + 1
    fanout = np.bincount(edge_parents, minlength=num_nodes + 1)
    offsets = np.concatenate([[0], np.cumsum(fanout)]).astype(np.int32)
    if num_edges >= 2**31 - 1:
      raise ValueError(f'Trie: {num_edges} edges overflow int32')
    return cls(offsets=offsets, edge_tokens=edge_tokens,
               edge_parents=edge_parents, num_sequences=m,
               max_length=int(valid.sum(1).max()),
               max_fanout=int(fanout.max()), eos_id=eos_id)

  # ------------------------------------------------------ host queries ---
  @property
  def num_nodes(self) -> int:
    """Real nodes (root included); the sink is node `num_nodes`."""
    return len(self.offsets) - 2

  @property
  def sink(self) -> int:
    return self.num_nodes

  def children(self, node: int) -> tuple[np.ndarray, np.ndarray]:
    """(sorted child tokens, their node ids) of `node`."""
    lo, hi = int(self.offsets[node]), int(self.offsets[node + 1])
    return self.edge_tokens[lo:hi], np.arange(lo, hi) + 1

  def child(self, node: int, token: int) -> int:
    """The node after `token`, or `sink` when it is not a child."""
    tokens, nodes = self.children(node)
    i = int(np.searchsorted(tokens, token))
    return int(nodes[i]) if i < len(tokens) and tokens[i] == token else \
        self.sink

  def contains(self, tokens: Sequence[int]) -> bool:
    """Whether `tokens` (an id, EOS-terminated; trailing 0s ignored) is a
    complete id of the trie."""
    tokens = [int(t) for t in tokens]
    if self.eos_id not in tokens:
      return False
    node = 0
    for t in tokens[:tokens.index(self.eos_id) + 1]:
      node = self.child(node, t)
    return node != self.sink

  def max_token(self) -> int:
    return int(self.edge_tokens.max())

  # ------------------------------------------------------------ device ---
  def constraint(self, vocab_size: int | None = None,
                 dense: bool | int | None = None, *,
                 num_nodes: int | None = None, max_fanout: int | None = None,
                 max_length: int | None = None) -> 'TrieConstraint':
    """The logits processor, its arrays on the default device.

    vocab_size: the model's; checked against the trie's tokens; needed for
      a dense table.
    dense: how many nodes (the first, breadth-first: the root and the
      shallow, wide nodes) get a dense row of child ids. None: all if
      (num_nodes + 1) * vocab_size <= DENSE_MAX_ENTRIES, else as many as
      fit in it; True: all; False: none (pure CSR).
    num_nodes, max_fanout, max_length: upper bounds to pad to, so that
      tries of different sizes share one compilation (None: exact;
      max_fanout bounds the CSR nodes' fan-out).
    """
    if vocab_size is not None and self.max_token() >= vocab_size:
      raise ValueError(f'Trie: token {self.max_token()} is outside the '
                       f'model vocabulary (vocab_size={vocab_size}); '
                       'extend the vocabulary (retrieval.dsi.docids)')
    n = num_nodes or self.num_nodes
    if dense is None:
      dense = 0 if vocab_size is None else (
          n + 1 if (n + 1) * vocab_size <= DENSE_MAX_ENTRIES else
          DENSE_MAX_ENTRIES // vocab_size)
    dense = {True: n + 1, False: 0}.get(dense, dense)
    if dense and vocab_size is None:
      raise ValueError('Trie.constraint: a dense table needs vocab_size')
    fanout = np.diff(self.offsets)
    sparse_fanout = int(fanout[dense:].max(initial=0))
    bounds = dict(num_nodes=(num_nodes, self.num_nodes),
                  max_fanout=(max_fanout, sparse_fanout),
                  max_length=(max_length, self.max_length))
    for name, (bound, actual) in bounds.items():
      if bound is not None and bound < actual:
        raise ValueError(f'Trie.constraint: {name}={bound} is below the '
                         f"trie's {actual}")
    width = 0 if dense > n else (max_fanout or sparse_fanout)
    # Padding nodes have no children; the sink is the last node.
    offsets = np.concatenate([self.offsets, np.full(
        n - self.num_nodes, self.offsets[-1], np.int32)])
    table = None
    if dense:
      table = np.full((dense, vocab_size), n, np.int32)
      keep = self.edge_parents < dense
      table[self.edge_parents[keep], self.edge_tokens[keep]] = (
          np.nonzero(keep)[0] + 1)
      table = jnp.asarray(table)
    # Padding edges belong to no node's slice: never read.
    edges = np.concatenate([self.edge_tokens, np.zeros(
        n - self.num_nodes, np.int32)])
    return TrieConstraint(
        offsets=jnp.asarray(offsets), edge_tokens=jnp.asarray(edges),
        dense=table, max_length=max_length or self.max_length,
        max_fanout=width, search_steps=search_rounds(width))


@jax.tree_util.register_dataclass
@dataclasses.dataclass(frozen=True)
class TrieConstraint:
  """Processor: only children of each row's trie node keep their score.

  Nodes below `num_dense` look children up in a dense (num_dense, vocab)
  table; the others search their CSR slice (at most max_fanout entries).
  Array fields are traced (a new trie of the same shapes does not
  recompile); the rest is static. Build it with `Trie.constraint()`.
  """
  offsets: jax.Array        # (num_nodes + 2,)
  edge_tokens: jax.Array    # (num_edges,)
  dense: jax.Array | None   # (num_dense, vocab) child ids, sink if none
  max_length: int = dataclasses.field(metadata=dict(static=True))
  max_fanout: int = dataclasses.field(metadata=dict(static=True))
  search_steps: int = dataclasses.field(metadata=dict(static=True))

  @property
  def sink(self) -> int:
    return self.offsets.shape[0] - 2

  @property
  def num_dense(self) -> int:
    return 0 if self.dense is None else self.dense.shape[0]

  def _sparse_child(self, node, token):
    # Lower bound of `token` in the node's sorted slice [lo, hi) by a
    # SEARCH_WIDTH-ary search: each round probes SEARCH_WIDTH evenly spaced
    # entries at once (one wide gather instead of five dependent ones:
    # per-op overhead, not bandwidth, dominates this tiny work).
    last = self.edge_tokens.shape[0] - 1
    lo, end = self.offsets[node], self.offsets[node + 1]
    hi = end
    probe = jnp.arange(SEARCH_WIDTH)
    for _ in range(self.search_steps):
      stride = jnp.maximum(-(-(hi - lo) // SEARCH_WIDTH), 1)
      q = lo[:, None] + stride[:, None] * probe[None]
      less = (q < hi[:, None]) & (
          self.edge_tokens[jnp.minimum(q, last)] < token[:, None])
      c = less.sum(1, dtype=jnp.int32)   # probes below token (a prefix)
      lo, hi = (jnp.where(c > 0, lo + (c - 1) * stride + 1, lo),
                jnp.where(c > 0, jnp.minimum(hi, lo + c * stride), lo))
    found = (lo < end) & (self.edge_tokens[jnp.minimum(lo, last)] == token)
    return jnp.where(found, lo + 1, self.sink)

  def child(self, node, token):
    """(n,) nodes, (n,) tokens -> (n,) child nodes (sink if none)."""
    if not self.num_dense:
      return self._sparse_child(node, token)
    dense = self.dense[jnp.minimum(node, self.num_dense - 1), token]
    if not self.max_fanout:      # every node is dense
      return dense
    return jnp.where(node < self.num_dense, dense,
                     self._sparse_child(node, token))

  def node(self, tokens, step):
    """Trie node of each row after its first `step` tokens: (n, L) -> (n,).
    Positions past max_length cannot be inside an id, so are not walked."""
    def body(t, node):
      return self.child(node, jax.lax.dynamic_index_in_dim(
          tokens, t, axis=1, keepdims=False))
    stop = jnp.minimum(step, min(tokens.shape[1], self.max_length))
    return jax.lax.fori_loop(0, stop, body,
                             jnp.zeros(tokens.shape[:1], jnp.int32))

  def _sparse_allowed(self, node, vocab_size: int):
    lo, hi = self.offsets[node], self.offsets[node + 1]
    idx = lo[:, None] + jnp.arange(self.max_fanout)[None]
    tok = self.edge_tokens[jnp.minimum(idx, self.edge_tokens.shape[0] - 1)]
    tok = jnp.where(idx < hi[:, None], tok, vocab_size)   # out of range
    return jax.vmap(lambda t: jnp.zeros((vocab_size,), bool).at[t].set(
        True, mode='drop'))(tok)

  def allowed(self, node, vocab_size: int):
    """(n,) nodes -> (n, vocab_size) bool: the node's child tokens."""
    if not self.num_dense:
      return self._sparse_allowed(node, vocab_size)
    dense = self.dense[jnp.minimum(node, self.num_dense - 1)] != self.sink
    if not self.max_fanout:
      return dense
    return jnp.where((node < self.num_dense)[:, None], dense,
                     self._sparse_allowed(node, vocab_size))

  def __call__(self, log_probs, state: DecodeState):
    v = log_probs.shape[-1]
    if self.dense is not None and self.dense.shape[1] != v:
      raise ValueError(f'TrieConstraint: dense table is for vocab '
                       f'{self.dense.shape[1]}, the model has {v}')
    keep = self.allowed(self.node(state.tokens, state.step), v)
    return jnp.where(keep, log_probs, NEG_INF)
