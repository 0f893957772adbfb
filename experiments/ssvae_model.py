"""The semisupervised VAE's model pieces (paper §5.1): the M2 model, and the labelled/unlabelled MNIST split with
dynamic binarisation.  The training loop and CLI are in
:mod:`experiments.ssvae`."""
import math

import numpy as np

from experiments import common
from nets import MLP, Linear, Module, Tensor, ops
from nets.losses import sparsemax_loss  # noqa: F401  (its home is nets.losses)
from refimpl.numerics import one_hot as onehot  # noqa: F401  (its home is refimpl.numerics)

N_CLASSES = 10
N_VALIDATION = 10_000
LABEL_FRACTION = 0.1

# =========================================================================== model

class SSVAE(Module):
    """Classifier, inference net and generative net of the M2 model.

    Sizes are constructor arguments so that tests can build a tiny float64 copy:
    ``n_pixels`` (784), ``n_classes`` (10), ``latent`` (8), ``classifier_hidden``
    ((256, 256, 256)), ``vae_hidden`` (128).  Layers are PyTorch-initialised from ``rng``
    in the order classifier, inference net, generative net.
    """

    def __init__(self, rng, xp=np, dtype=np.float32, n_pixels=784, n_classes=N_CLASSES,
                 latent=8, classifier_hidden=(256, 256, 256), vae_hidden=128):
        self.n_pixels, self.n_classes, self.latent = int(n_pixels), int(n_classes), int(latent)
        kw = dict(xp=xp, dtype=dtype)
        self.classifier = MLP([n_pixels, *classifier_hidden, n_classes], rng, "relu", **kw)
        self.enc1 = Linear(n_pixels + n_classes, vae_hidden, rng, **kw)   # [x, y] -> hidden
        self.enc2 = Linear(vae_hidden, vae_hidden, rng, **kw)
        self.enc3 = Linear(vae_hidden, 2 * latent, rng, **kw)              # -> (mu, log sigma)
        self.dec1 = Linear(latent + n_classes, vae_hidden, rng, **kw)      # [h, y] -> hidden
        self.dec2 = Linear(vae_hidden, vae_hidden, rng, **kw)
        self.dec3 = Linear(vae_hidden, n_pixels, rng, **kw)                # -> Bernoulli logits
        self.decoder_rows = 0      # pairs decoded so far (audit counter for the tests)

    def scores(self, x):
        """Classifier scores: x (B, P) constant -> Tensor (B, K)."""
        return self.classifier(Tensor(x))

    def encode_images(self, x):
        """The image part of the inference net's first layer, once per image:
        x (B, P) -> Tensor (B, hidden) = x W_x + b (the label part is added per pair)."""
        w_x = self.enc1.weight[:self.n_pixels]
        return ops.matmul(Tensor(x), w_x) + self.enc1.bias

    def pair_loss(self, x_part, x, idx, z, noise):
        """``l(x_idx, z) = -log p(x|h, z) + KL(q(h|x,z)||N(0,I)) + log K`` for n pairs.

        x_part : Tensor (B, hidden) from :meth:`encode_images`; x : constant (B, P) binary
        images; idx : int (n,); z : (n, K) one-hot array or relaxed Tensor; noise : (n, latent)
        standard normal.  ONE pass of both nets over the n pairs.  Returns Tensor (n,).
        """
        xp = x_part.xp
        z = z if isinstance(z, Tensor) else Tensor(xp.asarray(z, dtype=x_part.dtype))
        w_y = self.enc1.weight[self.n_pixels:]
        h = ops.relu(x_part[idx] + ops.matmul(z, w_y))
        h = self.enc3(ops.relu(self.enc2(h)))
        mu, log_sigma = h[:, :self.latent], h[:, self.latent:]
        kl = ops.gaussian_kl(mu, 2.0 * log_sigma)
        sample = mu + ops.exp(log_sigma) * Tensor(xp.asarray(noise, dtype=x_part.dtype))
        d = ops.relu(self.dec1(ops.concatenate([sample, z], axis=1)))
        logits = self.dec3(ops.relu(self.dec2(d)))
        self.decoder_rows += int(idx.shape[0])
        recon = -ops.bernoulli_log_likelihood(logits, x[idx]).sum(axis=1)
        return recon + kl + math.log(self.n_classes)


# =========================================================================== data

def make_split(n_train, split_seed, n_validation=N_VALIDATION, label_fraction=LABEL_FRACTION,
               max_train=None):
    """Indices into the training images: ``dict(validation, labelled, unlabelled)``.

    A permutation of ``range(n_train)`` from ``default_rng(split_seed)``: validation first,
    then the training pool (optionally cut to ``max_train``), of which the first
    ``round(label_fraction * pool)`` (at least 1) are labelled.
    """
    perm = np.random.default_rng(split_seed).permutation(n_train)
    if n_validation >= n_train:
        raise ValueError(f"make_split: {n_validation} validation images need more than "
                         f"{n_train} training images")
    pool = perm[n_validation:]
    if max_train is not None:
        pool = pool[:max_train]
    n_lab = max(1, int(round(label_fraction * len(pool))))
    if n_lab >= len(pool):
        raise ValueError(f"make_split: a pool of {len(pool)} images leaves no unlabelled ones; "
                         "raise --max-train")
    return {"validation": perm[:n_validation], "labelled": pool[:n_lab], "unlabelled": pool[n_lab:]}


def binarize(pixels, rng):
    """Dynamic binarisation: uint8 (..., P) -> float64 0/1, ``x ~ Bernoulli(pixel / 255)``."""
    return (rng.random(pixels.shape) < pixels / 255.0).astype(np.float64)


def load_data(args, parser):
    """MNIST arrays for the run: dict of uint8 pixels (N, 784), labels, fixed binary eval sets."""
    from experiments.data import DataError, load_dataset  # noqa: PLC0415
    try:
        ds = load_dataset("mnist", data_dir=args.data_dir, download=args.download)
    except DataError as exc:
        common.cli_error(parser, str(exc))
    train_x = ds["train_images"].reshape(-1, 784)
    split = make_split(len(train_x), args.split_seed, max_train=args.max_train)
    eval_rng = np.random.default_rng([args.split_seed, 7])
    val, test = split["validation"], np.arange(len(ds["test_images"]))
    if args.max_test is not None:
        val, test = val[:args.max_test], test[:args.max_test]
    return {
        "lab_x": train_x[split["labelled"]], "lab_y": ds["train_labels"][split["labelled"]],
        "unlab_x": train_x[split["unlabelled"]], "unlab_y": ds["train_labels"][split["unlabelled"]],
        "val_x": binarize(train_x[val], eval_rng), "val_y": ds["train_labels"][val],
        "test_x": binarize(ds["test_images"].reshape(-1, 784)[test], eval_rng),
        "test_y": ds["test_labels"][test],
    }
