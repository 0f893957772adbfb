"""The signal game's model pieces (paper §5.2): batched receiver scoring of
(message, candidate) pairs with handwritten VJPs, and the sender/receiver
:class:`Game`.  The training loop and CLI are in :mod:`experiments.signal_game`."""
import numpy as np

from nets import Embedding, Linear, Module, Tensor, ops
from nets.autodiff import make_output
from refimpl.backend import xp_of
from refimpl.numerics import one_hot

# =========================================================================== ops

def _pair_layout(idx, n_games):
    """For pair j of game idx[j]: its slot ``rank[j]`` among that game's pairs, and the
    largest number of pairs of one game.  (idx[j], rank[j]) are distinct."""
    xp = xp_of(idx)
    order = xp.argsort(idx, kind="stable")
    sorted_idx = idx[order]
    counts = xp.bincount(idx, minlength=n_games)
    starts = xp.cumsum(counts) - counts
    rank = xp.empty_like(idx)
    rank[order] = xp.arange(idx.shape[0]) - starts[sorted_idx]
    return rank, int(counts.max()) if idx.shape[0] else 0


def pair_scores(messages, candidates, idx):
    """Receiver scores of n (game, message) pairs without copying candidates per pair.

    messages : Tensor (n, E), the embedded message of each pair; candidates : Tensor
    (B, C, E), the projected candidates of each game; idx : int array (n,), the game of
    each pair.  Returns Tensor (n, C) with ``out[j, c] = <messages[j], candidates[idx[j], c]>``.

    The pairs are scattered into a padded (B, S, E) block (S = most pairs of one game; each
    (game, slot) holds at most one pair), multiplied with the candidates by one batched
    matmul, and gathered back.  Backward: the same two products, no scatter-add.
    """
    xp = messages.xp
    B, C, E = candidates.shape
    idx = xp.asarray(idx)
    rank, S = _pair_layout(idx, B)
    padded = xp.zeros((B, max(S, 1), E), dtype=messages.dtype)
    padded[idx, rank] = messages.data
    cand_t = xp.swapaxes(candidates.data, 1, 2)                     # (B, E, C)
    out = xp.matmul(padded, cand_t)[idx, rank]                      # (n, C)

    def vjp(g):
        """d msg_j = g_j cand[idx_j]; d cand[b] = sum_{j in b} g_j^T msg_j (both padded)."""
        gp = xp.zeros((B, max(S, 1), C), dtype=g.dtype)
        gp[idx, rank] = g
        g_msg = xp.matmul(gp, candidates.data)[idx, rank] if messages.requires_grad else None
        g_cand = xp.matmul(xp.swapaxes(gp, 1, 2), padded) if candidates.requires_grad else None
        return g_msg, g_cand

    return make_output(out, (messages, candidates), vjp, "pair_scores")


def embed_rows(table, cols):
    """``table[cols]`` for a Tensor ``table`` (V, E) and int array ``cols`` (n,): Tensor (n, E).

    The embedding of one-hot messages.  Backward ``onehot(cols)^T g`` as one matmul (no
    scatter-add), on either backend.
    """
    xp = table.xp
    cols = xp.asarray(cols)

    def vjp(g):
        """d table = onehot(cols)^T g."""
        hot = one_hot(cols, table.shape[0], xp, g.dtype).T                          # (V, n)
        return (xp.matmul(hot, g),)

    return make_output(table.data[cols], (table,), vjp, "embed_rows")


def straight_value(value, tensor):
    """A Tensor whose VALUE is the constant ``value`` and whose GRADIENT is ``tensor``'s:
    ``tensor + sg(value - tensor)``.  (Used to give SFE the 0/1 loss as its reward while
    the NLL's gradient trains the receiver.)"""
    value = tensor.xp.asarray(value, dtype=tensor.dtype)
    if tuple(value.shape) != tensor.shape:
        raise ValueError(f"straight_value: value has shape {tuple(value.shape)}, tensor {tensor.shape}")
    return make_output(value, (tensor,), lambda g: (g,), "straight_value")


# =========================================================================== model

class Game(Module):
    """Sender and receiver.  Sizes are constructor arguments (tests build tiny ones).

    features F, ``hidden`` (512), ``vocab`` (256), ``embedding`` (256), ``activation``
    ("tanh" | "relu"), ``temperature`` (sender logits / 10), ``message_init`` ("embedding":
    N(0,1); "linear": U(+-1/sqrt(vocab))).
    """

    def __init__(self, rng, n_features, xp=np, dtype=np.float32, hidden=512, vocab=256,
                 embedding=256, activation="tanh", temperature=10.0, message_init="embedding"):
        if activation not in ("tanh", "relu"):
            raise ValueError(f"activation must be 'tanh' or 'relu', got {activation!r}")
        kw = dict(xp=xp, dtype=dtype)
        self.activation, self.temperature, self.vocab = activation, float(temperature), int(vocab)
        self.sender1 = Linear(n_features, hidden, rng, **kw)
        self.sender2 = Linear(hidden, vocab, rng, **kw)
        self.project = Linear(n_features, embedding, rng, bias=False, **kw)
        table = (Embedding(vocab, embedding, rng, **kw) if message_init == "embedding"
                 else Linear(vocab, embedding, rng, bias=False, **kw))
        self.messages = table.weight                                     # (vocab, emb)
        self.receiver_rows = 0                                           # audit counter

    def sender_logits(self, x):
        """x (B, F) constant -> Tensor (B, vocab), already divided by the temperature."""
        h = self.sender1(Tensor(x))
        h = ops.tanh(h) if self.activation == "tanh" else ops.relu(h)
        return self.sender2(h) * (1.0 / self.temperature)

    def candidates(self, x):
        """x (B, C, F) constant -> Tensor (B, C, emb) (projected as one 2-D product)."""
        B, C, F = x.shape
        return self.project(Tensor(x.reshape(B * C, F))).reshape(B, C, -1)

    def receiver_scores(self, candidates, idx, z):
        """Scores (n, C) of n (game, message) pairs: z (n, vocab) one-hot array (rows looked
        up) or relaxed / straight-through Tensor (``z @ W``)."""
        self.receiver_rows += int(z.shape[0])
        if isinstance(z, Tensor):
            msg = ops.matmul(z, self.messages)
        else:
            msg = embed_rows(self.messages, candidates.xp.asarray(z).argmax(axis=1))
        return pair_scores(msg, candidates, idx)
