"""Semisupervised VAE (Kingma et al.'s M2) on MNIST with 10% labels: paper §5.1, App. B.

    python -m experiments.ssvae --method sparsemax --out runs/ssvae-sparsemax
    python -m experiments.ssvae --labeled-only --method dense --out runs/ssvae-warm     # warm start
    python -m experiments.ssvae --method dense --warm-start runs/ssvae-warm --out runs/ssvae-dense

Model (the authors' code, docs/authors.md)
------------------------------------------
* classifier q(y|x): 784 -> 256 -> 256 -> 256 -> 10 (ReLU); its scores go through the
  method's estimator (categorical latent, K = 10).
* inference net q(h|x, y): [x, onehot(y)] -> 128 -> 128 -> (mu, log sigma), h in R^8.
* generative net p(x|h, y): [h, onehot(y)] -> 128 -> 128 -> 784 Bernoulli logits.

Loss of one step (64 labelled + 64 unlabelled examples)::

    l(x, y)     = -log p(x|h, y) + KL(q(h|x,y) || N(0, I)) + log 10     (h = mu + sigma eps, one eps)
    labelled    = mean_b [ l(x_b, y_b) + class_loss(scores_b, y_b) ]
    unlabelled  = mean_b [ E_pi(y|x_b) l(x_b, y) - H(pi(.|x_b)) ]        (through the estimator)
    loss        = labelled + (N_unlabelled / N_labelled) * unlabelled    (= 9 with 10% labels)

``class_loss`` is the softmax cross-entropy, or the sparsemax loss for ``--method
sparsemax`` (:func:`sparsemax_loss`, gradient ``sparsemax(s) - onehot(y)``).  The ``log 10``
is ``-log p(y)`` (uniform prior); the authors leave that constant out, which changes no
gradient (SFE baselines absorb it).  ``-H(pi)`` is the ELBO's ``E_q log q(y|x)`` term, added
with coefficient 1 as the authors (``encoder_entropy_coeff=1``).  The estimator's ``loss_fn``
evaluates every (example, class) pair it is given in ONE batched pass of the inference and
generative nets: one decoder call per pair, so ``decoder calls`` = support size for dense
(10) and sparsemax (adaptive), the number of samples for the MC methods.

Data (see :func:`make_split`)
-----------------------------
(``--max-train N`` keeps the first N images of the 50,000-image training pool, 10% of them
labelled; ``--max-test N`` the first N validation and test images; ``--batch-size`` is per
part: B labelled + B unlabelled images per step.)

The 60,000 MNIST training images are permuted with ``--split-seed`` (default 0, the same
for every run and method, like the authors' fixed index files): the first 10,000 are the
validation set, the next 5,000 are labelled and the other 45,000 unlabelled.  The
official 10,000 test images are the test set.  Training images are binarised dynamically
(a fresh ``x ~ Bernoulli(pixel/255)`` every time an image is used, drawn from the run's
rng); validation and test images are binarised once, with a generator seeded by the split
seed, so every epoch and every method is scored on the same binary images.  An epoch is one
pass over the unlabelled set in batches of 64, each paired with 64 labelled images (the
authors' ``CycleConcatDataset``: position i of the shuffled epoch uses labelled image
``i mod N_labelled``).

Metrics (``metrics.jsonl``, one record per epoch)
-------------------------------------------------
``train_loss`` (the objective's value, labelled + 9 x unlabelled), ``train_elbo`` (-(E_pi l - H) of the unlabelled batches, the estimator's
reported value), ``train_acc`` (classifier on the unlabelled batches), ``calls_*``
(decoder calls per unlabelled example over the epoch, as the paper's Fig. 1 right),
``val_acc``/``test_acc``, ``val_elbo``/``test_elbo`` (the ELBO under the method's own
distribution, summed exactly over its support: softmax for dense and the MC methods,
sparsemax for sparsemax; one fixed eps per image), ``*_loss_argmax`` (the authors' logged
value: ``-log p(x|h,y) + KL`` at the classifier's argmax) and ``*_calls_*`` (support
size at evaluation: mean, median, p10/25/75/90, as the bit-VAE's); with ``--warm-start-epochs N`` the first N records have ``phase``
"warm-start" (labelled loss only; not eligible as the best epoch) and the rest "train".
``test.json`` holds the test metrics (``test_*``) of the epoch with the best validation ELBO,
those of the last epoch, and the timing keys ``train_seconds`` (the epochs' ``seconds``
summed), ``seconds`` / ``cpu_seconds`` (the test phase; the test split is scored each epoch).
"""
import math
import sys
import time
from pathlib import Path

import numpy as np

from experiments import common
from experiments.plot import plot_run_or_explain
from experiments.ssvae_model import (N_VALIDATION, SSVAE, binarize, load_data, make_split,
                                     onehot, sparsemax_loss)
from nets import Adam, Tensor, no_grad, ops
from refimpl.backend import to_numpy

__all__ = ["METHODS", "PAPER_LR", "SSVAE", "sparsemax_loss", "make_split", "binarize",
           "make_estimator_for", "unlabelled_loss_fn", "step_objective", "evaluate", "train",
           "build_parser", "main"]

METHODS = ("dense", "sparsemax", "sfe", "sfe-plus", "sum-and-sample", "gumbel", "st-gumbel")
PAPER_LR = {"sparsemax": 5e-4, "dense": 1e-3, "gumbel": 1e-3, "st-gumbel": 1e-3,
            "sum-and-sample": 1e-3, "sfe": 1e-4, "sfe-plus": 1e-4}
WEIGHT_DECAY = 1e-5
EVAL_SEED_OFFSET = 1_000_003    # eval noise: default_rng(split_seed + this), never the train rng
PROG = "python -m experiments.ssvae"
N_TRAIN_POOL = 60_000 - N_VALIDATION   # MNIST training images left after the validation split


# =========================================================================== training

def make_estimator_for(method, temperature=1.0, sfe_plus_baseline="detached"):
    """The categorical estimator of ``method`` (sum-and-sample: k=1; Gumbel: fixed temperature;
    ``sfe_plus_baseline`` for sfe-plus only)."""
    from nets.estimators import make_estimator  # noqa: PLC0415
    options = {}
    if method == "sfe-plus":
        options["sfe_plus_baseline"] = sfe_plus_baseline
    if method in ("gumbel", "st-gumbel"):
        options["temperature"] = temperature
    if method == "sum-and-sample":
        options["k"] = 1
    return make_estimator(method, "categorical", **options)


def unlabelled_loss_fn(model, x, rng):
    """The estimator's ``loss_fn(idx, z) -> Tensor (n,)`` for the unlabelled batch ``x`` (B, P).

    The image half of the inference net's first layer is computed once per image; each
    call then runs both nets once over all n pairs, with fresh noise from ``rng``.
    """
    x_part = model.encode_images(x)

    def loss_fn(idx, z):
        idx = x_part.xp.asarray(idx)
        noise = rng.standard_normal((int(idx.shape[0]), model.latent))
        return model.pair_loss(x_part, x, idx, z, noise)

    return loss_fn


def labelled_loss(model, x, y, method, rng):
    """Per-example ``l(x, y) + class_loss`` of the labelled batch: Tensor (B,)."""
    xp = model.enc1.weight.xp
    dtype = model.enc1.weight.dtype
    idx = xp.arange(x.shape[0])
    noise = rng.standard_normal((x.shape[0], model.latent))
    vae = model.pair_loss(model.encode_images(x), x, idx, onehot(y, model.n_classes, xp, dtype), noise)
    scores = model.scores(x)
    cls = sparsemax_loss(scores, y) if method == "sparsemax" else ops.cross_entropy(scores, y)
    return vae + cls


def step_objective(model, estimator, method, lab, unlab, rng, unlabelled_weight):
    """Total loss of one step and its parts.

    lab, unlab : ``(x, y)`` with x binary (B, P) on the model's device (``unlab=None``:
    labelled-only warm start).  Returns ``(loss Tensor, info dict)`` with info holding the
    unlabelled ``estimate`` (or None), the unlabelled scores and ``value``, the objective's
    value (the labelled loss + weight * (the estimator's reported E_pi l - H); unlike the
    surrogate it means the same for every method).
    """
    loss = labelled_loss(model, lab[0], lab[1], method, rng).mean()
    info = {"estimate": None, "scores": None, "value": float(loss.item())}
    if unlab is not None:
        scores = model.scores(unlab[0])
        est = estimator(scores, unlabelled_loss_fn(model, unlab[0], rng), rng)
        loss = loss + unlabelled_weight * (est.surrogate - est.entropy.mean())
        unlab_value = float(to_numpy(est.loss).mean() - to_numpy(est.entropy.data).mean())
        info.update(estimate=est, scores=scores,
                    value=info["value"] + unlabelled_weight * unlab_value)
    return loss, info


def _device_batch(pixels, rng, xp, dtype):
    """Binarise a uint8 batch (B, P) with ``rng`` and put it on the device."""
    return xp.asarray(binarize(pixels, rng).astype(dtype))


def epoch_steps(data, args, labelled_only):
    """Optimisation steps in one epoch (one batch of the labelled or unlabelled images each)."""
    return -(-len(data["lab_x" if labelled_only else "unlab_x"]) // args.batch_size)


def train_epoch(state, data, args, xp, dtype, labelled_only=None):
    """One epoch; returns the training metrics (means over the epoch).  ``labelled_only``
    (default ``args.labeled_only``): one pass over the labelled set, labelled loss only."""
    model, opt, est, rng = state["model"], state["opt"], state["estimator"], state["rng"]
    labelled_only = args.labeled_only if labelled_only is None else labelled_only
    n_lab = len(data["lab_x"])
    n_main = n_lab if labelled_only else len(data["unlab_x"])
    order = rng.permutation(n_main)
    weight = len(data["unlab_x"]) / n_lab
    sums = {"loss": 0.0, "elbo": 0.0, "acc": 0.0}
    calls, count = [], 0
    steps = range(0, n_main, args.batch_size)
    bar = common.progress(steps, total=len(steps), desc=f"epoch {state['epoch'] + 1}",
                          clock=state.get("clock"), log_every=getattr(args, "log_every", 50))
    for start in bar:
        pos = order[start:start + args.batch_size]
        lab_i = pos if labelled_only else pos % n_lab
        lab = (_device_batch(data["lab_x"][lab_i], rng, xp, dtype),
               xp.asarray(data["lab_y"][lab_i].astype(np.int64)))
        unlab = None
        if not labelled_only:
            unlab = (_device_batch(data["unlab_x"][pos], rng, xp, dtype), data["unlab_y"][pos])
        opt.zero_grad()
        loss, info = step_objective(model, est, args.method, lab, unlab, rng, weight)
        loss.backward()
        opt.step()
        b = len(pos)
        sums["loss"] += info["value"] * b
        count += b
        e = info["estimate"]
        if e is not None:
            sums["elbo"] += -float(to_numpy(e.loss - e.entropy.data).sum())
            pred = to_numpy(info["scores"].data.argmax(axis=1))
            sums["acc"] += float((pred == unlab[1]).sum())
            calls.append(to_numpy(e.calls))
        bar.set_postfix(loss=info["value"])
    out = {"train_loss": sums["loss"] / count}
    if calls:
        out.update(train_elbo=sums["elbo"] / count, train_acc=sums["acc"] / count)
        out.update(common.summarize_calls(np.concatenate(calls), prefix="calls_"))
    return out


def evaluate(model, x, y, method, seed, batch_size=1000):
    """Accuracy and ELBO of binary images ``x`` (N, P) with labels ``y`` (N,).

    The classifier's distribution is the method's mapping (sparsemax for "sparsemax",
    softmax otherwise); ``l`` is evaluated on every (image, class) pair of its support
    with one fixed eps per pair from ``default_rng(seed)``.  Returns ``dict(acc, elbo,
    loss_argmax, calls_mean)``.
    """
    from refimpl import sparsemax as _sparsemax  # noqa: PLC0415
    xp, dtype = model.enc1.weight.xp, model.enc1.weight.dtype
    rng = np.random.default_rng(seed)
    noise_all = rng.standard_normal((len(x), model.n_classes, model.latent))
    totals = {"acc": 0.0, "elbo": 0.0, "loss_argmax": 0.0}
    calls = []                         # decoder calls per image (support size)
    rows = model.decoder_rows
    with no_grad():
        for start in range(0, len(x), batch_size):
            xb = xp.asarray(x[start:start + batch_size].astype(dtype))
            yb = xp.asarray(y[start:start + batch_size])
            s = model.scores(xb).data
            p = _sparsemax(s, axis=-1) if method == "sparsemax" else ops.softmax(Tensor(s)).data
            idx, cls = xp.nonzero(p > 0)
            noise = xp.asarray(noise_all[start:start + batch_size])[idx, cls]
            ell = model.pair_loss(model.encode_images(xb), xb, idx,
                                  onehot(cls, model.n_classes, xp, dtype), noise).data
            table = xp.zeros(p.shape, dtype=dtype)             # l on the support, 0 elsewhere
            table[idx, cls] = ell
            expected = (p * table).sum(axis=1)
            entropy = -(p * xp.log(xp.where(p > 0, p, xp.ones_like(p)))).sum(axis=1)
            pred = s.argmax(axis=1)
            at_argmax = table[xp.arange(len(xb)), pred] - math.log(model.n_classes)
            totals["acc"] += float((pred == yb).sum())
            totals["elbo"] += float((entropy - expected).sum())
            totals["loss_argmax"] += float(at_argmax.sum())
            calls.append(to_numpy(xp.bincount(idx, minlength=len(xb))))
    model.decoder_rows = rows          # evaluation is not training work
    n = len(x)
    return {"acc": totals["acc"] / n, "elbo": totals["elbo"] / n,
            "loss_argmax": totals["loss_argmax"] / n,
            **common.summarize_calls(np.concatenate(calls), prefix="calls_")}


# =========================================================================== run state

def _config(args, lr):
    """The JSON-able run configuration (config.json, checked on --resume)."""
    keys = ("method", "labeled_only", "warm_start", "warm_start_epochs", "seed", "split_seed",
            "epochs", "batch_size", "max_train", "max_test", "dtype", "backend", "temperature",
            "sfe_plus_baseline")
    cfg = {k: getattr(args, k) for k in keys}
    cfg.update(lr=lr, weight_decay=WEIGHT_DECAY, experiment="ssvae",
               label=("warm-start " if args.labeled_only else "") + args.method)
    return cfg


def save_state(out, state, best):
    """Atomic ``last.npz`` (everything to resume)."""
    est = state["estimator"]
    common.save_checkpoint(out / "last.npz", {
        "epoch": state["epoch"], "model": state["model"].state_dict(),
        "optimizer": state["opt"].state_dict(),
        "estimator": est.state_dict() if est is not None else {},
        "rng": state["rng"].bit_generator.state, "best": best})


def load_state(out, state):
    """Restore ``state`` from ``out/last.npz`` (or a ``checkpoint.npz`` of an older run);
    returns the saved ``best`` record."""
    ck = common.load_checkpoint(common.resume_checkpoint(out))
    state["model"].load_state_dict(ck["model"])
    state["opt"].load_state_dict(ck["optimizer"])
    if state["estimator"] is not None:
        state["estimator"].load_state_dict(ck["estimator"])
    state["rng"].bit_generator.state = ck["rng"]
    state["epoch"] = int(ck["epoch"])
    return ck["best"]


def warm_start(model, path, parser):
    """Load model weights from a ``--labeled-only`` run (its ``best.npz``, a checkpoint file)."""
    path = Path(path)
    candidates = [path] if path.is_file() else [path / "best.npz", path / "last.npz",
                                                       path / "checkpoint.npz"]
    for p in candidates:
        if p.is_file():
            try:
                model.load_state_dict(common.load_checkpoint(p)["model"])
            except (KeyError, ValueError) as exc:
                common.cli_error(parser, f"--warm-start {p}: {exc}")
            return p
    common.cli_error(parser, f"--warm-start {path}: no best.npz or last.npz there "
                             "(run with --labeled-only first)")


def train(args, parser=None, log=None):
    """Run the experiment described by parsed ``args``; returns the last metrics record.
    ``--out`` is locked meanwhile (:func:`experiments.common.run_directory`)."""
    log = sys.stderr if log is None else log      # the stderr of the call, not of the import
    xp = common.select_backend(args.backend, parser)
    with common.run_directory(args.out, parser, resume=args.resume,
                              overwrite=getattr(args, "overwrite", False)) as out:
        return _train(args, parser, log, xp, out)


def _train(args, parser, log, xp, out):
    """:func:`train` with ``out`` locked."""
    dtype = np.dtype(args.dtype)
    lr = args.lr if args.lr is not None else PAPER_LR[args.method]
    config = _config(args, lr)
    if args.resume:
        common.check_resume(out, config, parser, "epochs")
    data = load_data(args, parser)
    rng = np.random.default_rng(args.seed)
    model = SSVAE(rng, xp=xp, dtype=dtype)
    if args.warm_start and not args.resume:
        print(f"warm start from {warm_start(model, args.warm_start, parser)}", file=log)
    state = {"model": model, "opt": Adam(model.parameters(), lr=lr, weight_decay=WEIGHT_DECAY),
             "estimator": None if args.labeled_only else make_estimator_for(
                 args.method, args.temperature, args.sfe_plus_baseline),
             "rng": rng, "epoch": 0}
    best = {"val_elbo": None}
    if args.resume:
        best = load_state(out, state)
    from experiments.data import data_source  # noqa: PLC0415
    common.write_json(out / "config.json", {**config, "data": data_source("mnist",
                                                                          data_dir=args.data_dir)})
    record = None
    seed_eval = args.split_seed + EVAL_SEED_OFFSET
    with common.MetricsLog(out / "metrics.jsonl", keep_epochs=state["epoch"]) as metrics:
        warm_epochs = 0 if args.labeled_only else args.warm_start_epochs
        per_epoch = [epoch_steps(data, args, e < warm_epochs or args.labeled_only)
                     for e in range(warm_epochs + args.epochs)]
        state["clock"] = clock = common.RunClock(sum(per_epoch), sum(per_epoch[:state["epoch"]]),
                                                 len(per_epoch) - state["epoch"])
        while state["epoch"] < warm_epochs + args.epochs:
            t0 = time.perf_counter()
            warm = state["epoch"] < warm_epochs
            record = train_epoch(state, data, args, xp, dtype,
                                 labelled_only=True if warm else None)
            state["epoch"] += 1
            if warm_epochs:
                record["phase"] = "warm-start" if warm else "train"
            eval_start = time.perf_counter()
            for split in ("val", "test"):
                ev = evaluate(model, data[f"{split}_x"], data[f"{split}_y"], args.method, seed_eval,
                              batch_size=args.eval_batch_size)
                record.update({f"{split}_{k}": v for k, v in ev.items()})
            clock.add_eval(time.perf_counter() - eval_start)
            record = {"epoch": state["epoch"], **record, "seconds": time.perf_counter() - t0}
            metrics.log(record)
            if not warm and (best["val_elbo"] is None or record["val_elbo"] > best["val_elbo"]):
                best = {k: v for k, v in record.items() if k.startswith(("val_", "test_", "epoch"))}
                common.save_checkpoint(out / "best.npz", {"epoch": state["epoch"],
                                                          "model": model.state_dict()})
            save_state(out, state, best)
            print(f"epoch {state['epoch']}: val_acc={record['val_acc']:.4f} "
                  f"val_elbo={record['val_elbo']:.2f} calls={record.get('calls_mean', 0):.2f} "
                  f"run ETA {common.format_seconds(clock.eta() or 0.0)}",
                  file=log, flush=True)
    # the test split is scored every epoch (inside the epochs' seconds): the test phase
    # only picks the best epoch's row, so its own seconds are ~0
    test_start, test_cpu = time.perf_counter(), time.process_time()
    records = common.read_metrics(out / "metrics.jsonl")
    last = records[-1]
    common.write_json(out / "test.json", {
        "best_epoch": best["epoch"], **{k: v for k, v in best.items() if k.startswith("test_")},
        "last_epoch": last["epoch"],
        "last": {k: v for k, v in last.items() if k.startswith(("test_", "calls_"))},
        **common.run_seconds(records, test_start, test_cpu)})
    plot_run_or_explain(out, log)
    print(f"test: accuracy {best.get('test_acc', float('nan')):.4f}, ELBO "
          f"{best.get('test_elbo', float('nan')):.2f} (best epoch {best['epoch']}), calls "
          f"{best.get('test_calls_mean', float('nan')):.2f}", file=log, flush=True)
    return last


# =========================================================================== CLI

def build_parser():
    """The command-line parser (bad values exit 2 with one line)."""
    p = common.make_parser("Semisupervised VAE (M2) on MNIST with 10% labels (paper §5.1).", prog=PROG)
    p.add_argument("--method", choices=METHODS, default="sparsemax",
                   help="how E_q(y|x)[l] is trained on unlabelled images")
    common.add_common_args(p, epochs=200, batch_size=64)
    p.add_argument("--labeled-only", action="store_true",
                   help="warm start as the authors: train on the labelled loss only")
    p.add_argument("--warm-start", metavar="RUN_DIR", default=None,
                   help="initialise the model from a --labeled-only run (its best.npz)")
    p.add_argument("--warm-start-epochs", metavar="N", type=common.nonnegative_int, default=0,
                   help="first train N epochs on the labelled loss only, in this run, with the "
                        "method's class loss (the sparsemax loss for sparsemax, else softmax "
                        "cross-entropy), then --epochs full epochs; the authors used 100, the "
                        "paper states none (0)")
    common.add_sfe_plus_baseline_arg(p)
    common.add_argument_with_alias(p, "--max-test", "--max-eval", metavar="N",
                                   type=common.positive_int, default=None,
                                   help="evaluate on the first N validation and N test images only "
                                        "(at most 10000)")
    common.add_eval_args(p, eval_batch_size=1000,
                         eval_help="images per batch for validation and test (results do not depend on it)")
    p.add_argument("--split-seed", type=common.nonnegative_int, default=0,
                   help="seed of the validation/labelled/unlabelled split (same for all runs)")
    p.add_argument("--temperature", type=common.positive_float, default=1.0,
                   help="Gumbel-softmax temperature (gumbel, st-gumbel)")
    return p


def main(argv=None):
    """CLI entry point."""
    parser = build_parser()
    args = parser.parse_args(argv)
    if args.labeled_only and args.warm_start:
        common.cli_error(parser, "--labeled-only and --warm-start exclude each other")
    if args.labeled_only and args.warm_start_epochs:
        common.cli_error(parser, "--labeled-only and --warm-start-epochs exclude each other "
                                 "(--labeled-only is itself a warm start: set its --epochs)")
    if args.out is None:
        common.cli_error(parser, "--out DIR is required")
    if args.max_train is not None and args.max_train > N_TRAIN_POOL:
        common.cli_error(parser, f"--max-train {args.max_train} exceeds the {N_TRAIN_POOL} training "
                                 "images left after the validation split")
    if args.max_test is not None and args.max_test > N_VALIDATION:
        common.cli_error(parser, f"--max-test {args.max_test} exceeds the {N_VALIDATION} validation "
                                 "and test images")
    train(args, parser)
    return 0


if __name__ == "__main__":
    sys.exit(main())
