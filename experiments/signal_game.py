"""Emergent communication: the signal game of paper §5.2 (Lazaridou et al. 2017, 16 candidates).

    python -m experiments.signal_game --method sparsemax --out runs/signal-sparsemax
    python -m experiments.signal_game --method dense --features vgg.npz --out runs/signal-dense

The sender sees the target image only and sends one symbol z of a vocabulary of 256; the
receiver sees 16 candidate images (distinct concepts) and the message, and must pick the
target.  In the paper's notation x = (candidates, target), pi(z|x) = sender(z | v_target)
and ``l(x, z) = -log p_receiver(target | candidates, z)``.

Architecture (after Lazaridou et al. / EGG, sizes of docs/authors.md)
-----------------------------------------------------------------
* sender: ``Linear(F -> hidden=512)``, ``--activation`` (tanh, default; or relu),
  ``Linear(hidden -> vocab=256)``; logits divided by ``--sender-temperature`` 10.
  (The authors' sender instead maps F -> 256 without bias, applies a learned elementwise
  sigmoid network with 512 hidden units, then 256 -> vocab; the issue asks for the MLP.)
* receiver: candidates projected by ``Linear(F -> emb=256, no bias)``; the message
  embedded by a (vocab, emb) matrix (``z @ W``: a row lookup for one-hot z, a mixture for a
  relaxed Gumbel z; initialised N(0, 1) as ``nn.Embedding``, or U(+-1/sqrt(vocab)) as the
  authors' ``nn.Linear`` for the Gumbel methods); candidate scores are dot products,
  softmax over the 16.
* the receiver runs once per (game, message) pair: ``decoder calls`` = receiver calls per
  game.  The loss_fn evaluates all pairs of a step in one batched product
  (:func:`pair_scores`), never looping over games or messages.

Methods and losses (lr / entropy coefficient from docs/authors.md; Adam, no weight decay)
--------------------------------------------------------------------------------------
* ``dense`` (softmax, all 256 messages) and ``sparsemax``: exact marginalisation of the NLL.
* ``sfe-nll``: SFE (running-mean baseline) with reward = NLL; the receiver is trained by
  the NLL's gradient at the sampled message.
* ``sfe-01`` and ``sfe-plus``: the SFE term uses the 0/1 loss ``1[receiver's argmax !=
  target]`` (``sfe-plus``: baseline = the 0/1 loss of a second, independent sample); the
  receiver is still trained by the NLL's gradient at the sampled message.  Precisely, the
  loss handed to the estimator is ``l = nll + sg(zero_one - nll)``: its VALUE is the 0/1 loss
  (what SFE multiplies with ``grad log pi`` and averages into its baseline) and its GRADIENT
  is the NLL's (the estimator's pathwise ``+ l`` term).  The authors instead make the
  receiver sample its choice and train it with REINFORCE too (and add its entropy); we keep
  the receiver deterministic so every method trains it the same way.
* ``gumbel`` / ``st-gumbel``: Gumbel-softmax relaxation / straight-through, temperature 1
  throughout (App. B).
Each method adds ``-coeff * H(sender)`` (the method's distribution's entropy).

Evaluation and metrics
----------------------
Communication success = the receiver's argmax is the target.  Two columns for every method:

* ``success_argmax`` (= ``success``, the model-selection metric): for the marginalised methods
  (dense, sparsemax) the expectation over the sender's distribution,
  ``sum_z pi(z) 1[argmax = target]``, with ``|support|`` receiver calls per game; for the
  sampling methods the sender's argmax message (our deterministic evaluation), 1 call.
* ``success_sampled``: the same expectation for the marginalised methods; for the sampling
  methods one message sampled per game, as the authors' code scores them (it has no
  evaluation mode): a hard sample z ~ softmax for SFE and ST Gumbel, the relaxed sample
  softmax(s + g) for Gumbel.  The authors' SFE (0/1) also samples the receiver's choice; our
  receiver is deterministic, so its argmax decides here.  Drawn from a fixed evaluation
  generator (``default_rng([seed, 1])`` validation, ``[seed, 2]`` test).

``acc_argmax`` (the argmax message, for every method) is kept beside them.  An epoch is 100 steps
(the authors' ``batches_per_epoch``); after each, the 1,024 validation games (seed
20200724) are scored -> ``metrics.jsonl`` (``val_success`` = ``val_success_argmax``, formerly ``val_acc``,
``val_success_sampled``, ``val_loss``,
``val_calls_*`` (mean, median, p10/25/75/90 per game), training ``calls_*``, ``train_loss``, ``entropy``).  At the end the model
with the best validation success and the last one play the 9,984 test games (seed
20200725) -> ``test.json``.  Random guessing succeeds 1/16 = 6.25%.

Data: ``--features FILE.npz`` or, by default, the seeded synthetic stand-in of
:mod:`experiments.signal_data` (docs/signal_game_data.md).
"""
import hashlib
import sys
import time
from pathlib import Path

import numpy as np

from experiments import common
from experiments.plot import plot_run_or_explain
from experiments import signal_data as sd
from experiments.signal_game_model import Game, embed_rows, pair_scores, straight_value
from nets import Adam, Tensor, no_grad, ops
from refimpl.backend import to_numpy
from refimpl.numerics import one_hot

__all__ = ["METHODS", "PAPER_SETTINGS", "Game", "pair_scores", "embed_rows", "straight_value", "game_loss_fn",
           "make_estimator_for", "step_objective", "evaluate", "train", "build_parser", "main"]

METHODS = ("dense", "sparsemax", "sfe-01", "sfe-nll", "sfe-plus", "gumbel", "st-gumbel")
PAPER_SETTINGS = {"sparsemax": (0.005, 0.1), "dense": (0.001, 0.1), "sfe-01": (0.001, 0.01),
                  "sfe-nll": (0.001, 0.05), "sfe-plus": (0.001, 0.05), "gumbel": (0.001, 0.01),
                  "st-gumbel": (0.001, 0.01)}          # (lr, entropy coefficient)
ESTIMATOR_NAME = {"dense": "dense", "sparsemax": "sparsemax", "sfe-01": "sfe", "sfe-nll": "sfe",
                  "sfe-plus": "sfe-plus", "gumbel": "gumbel", "st-gumbel": "st-gumbel"}
ZERO_ONE = frozenset({"sfe-01", "sfe-plus"})       # SFE reward = 0/1 loss
MARGINALISED = frozenset({"dense", "sparsemax"})
PROG = "python -m experiments.signal_game"


# =========================================================================== training

def make_estimator_for(method, sfe_plus_baseline="detached"):
    """The categorical estimator of ``method`` (Gumbel: temperature 1 throughout;
    ``sfe_plus_baseline`` is used by sfe-plus only)."""
    from nets.estimators import make_estimator  # noqa: PLC0415
    name = ESTIMATOR_NAME[method]
    options = {"temperature": 1.0} if name in ("gumbel", "st-gumbel") else {}
    if name == "sfe-plus":
        options["sfe_plus_baseline"] = sfe_plus_baseline
    return make_estimator(name, "categorical", **options)


def game_loss_fn(game, candidates, target, zero_one):
    """The estimator's ``loss_fn(idx, z) -> Tensor (n,)``: the receiver's NLL of the target
    (``zero_one``: value = 0/1 loss, gradient = NLL's; see the module docstring)."""
    xp = candidates.xp

    def loss_fn(idx, z):
        idx = xp.asarray(idx)
        scores = game.receiver_scores(candidates, idx, z)
        t = target[idx]
        nll = ops.cross_entropy(scores, t)
        if not zero_one:
            return nll
        wrong = (scores.data.argmax(axis=1) != t).astype(scores.dtype)
        return straight_value(wrong, nll)

    return loss_fn


def step_objective(game, estimator, method, x, images, target, rng, entropy_coeff):
    """Loss of one batch of games and the estimate.

    x : device features (N, F); images : int (B, C); target : int (B,) positions.
    Returns ``(loss Tensor, Estimate)``; loss = surrogate - coeff * mean H(sender).
    """
    xp = game.messages.xp
    images_d, target_d = xp.asarray(images), xp.asarray(target)
    cands = game.candidates(x[images_d])                                  # (B, C, emb)
    logits = game.sender_logits(x[images_d[xp.arange(len(target_d)), target_d]])
    est = estimator(logits, game_loss_fn(game, cands, target_d, method in ZERO_ONE), rng)
    return est.surrogate - entropy_coeff * est.entropy.mean(), est


def _sampled_success(game, method, logits, cands, t, rng):
    """Successes (b,) of one sampled message per game, as the authors' code scores a
    sampling method: a hard sample z ~ softmax(logits) (Gumbel-max) for SFE and ST Gumbel,
    the relaxed sample softmax(logits + g) (temperature 1) for Gumbel; receiver argmax."""
    xp = logits.xp
    b = int(t.shape[0])
    noisy = logits.data + xp.asarray(rng.gumbel(size=logits.shape), dtype=logits.dtype)
    if method == "gumbel":
        msg = ops.matmul(ops.softmax(Tensor(noisy), axis=1), game.messages)
    else:
        msg = embed_rows(game.messages, noisy.argmax(axis=1))
    scores = pair_scores(msg, cands, xp.arange(b))
    return (scores.data.argmax(axis=1) == t).astype(logits.dtype)


def evaluate(game, method, x, images, target, chunk=512, rng=None, progress_desc=None):
    """Success, NLL and receiver calls on fixed games (module docstring), under no_grad.

    Returns ``dict(success, acc_argmax, success_argmax, success_sampled, loss, calls_*)``:
    ``success`` = ``success_argmax`` is the expected success over the sender's distribution for
    dense/sparsemax and the argmax message's otherwise; ``acc_argmax`` the argmax message's
    for every method; ``success_sampled`` the expected success again for dense/sparsemax and,
    for the sampling methods, that of one message sampled per game from ``rng`` (numpy
    Generator; default ``default_rng(0)``) as in :func:`_sampled_success`.
    ``progress_desc``: show the chunks' progress under that name.
    """
    from refimpl import sparsemax as _sparsemax  # noqa: PLC0415
    xp, dtype = game.messages.xp, game.messages.dtype
    rng = np.random.default_rng(0) if rng is None else rng
    tot = {"acc": 0.0, "acc_argmax": 0.0, "sampled": 0.0, "loss": 0.0}
    calls = []                          # receiver calls per game (support size)
    rows = game.receiver_rows
    with no_grad():
        starts = range(0, len(target), chunk)
        if progress_desc is not None:
            starts = common.progress(starts, total=len(starts), desc=progress_desc,
                                     log_every=max(1, len(starts) // 10), unit="batches")
        for lo in starts:
            im, t = xp.asarray(images[lo:lo + chunk]), xp.asarray(target[lo:lo + chunk])
            b = int(t.shape[0])
            cands = game.candidates(x[im])
            logits = game.sender_logits(x[im[xp.arange(b), t]]).data
            if method in MARGINALISED:
                p = _sparsemax(logits, axis=-1) if method == "sparsemax" else ops.softmax(Tensor(logits)).data
            else:
                p = one_hot(logits.argmax(1), logits.shape[1], xp, dtype)
            idx, m = xp.nonzero(p > 0)
            game.receiver_rows += int(idx.shape[0])
            scores = pair_scores(embed_rows(game.messages, m), cands, idx)
            nll = ops.cross_entropy(scores, t[idx]).data
            correct = (scores.data.argmax(axis=1) == t[idx]).astype(dtype)
            w = p[idx, m]
            tot["acc"] += float((w * correct).sum())
            tot["loss"] += float((w * nll).sum())
            calls.append(to_numpy(xp.bincount(idx, minlength=b)))
            top = logits.argmax(axis=1)
            at_top = m == top[idx]
            if method in MARGINALISED and not bool(xp.all(xp.bincount(idx[at_top], minlength=b) == 1)):
                raise RuntimeError("evaluate: the argmax message is not in the support")
            tot["acc_argmax"] += float(correct[at_top].sum())
            if method not in MARGINALISED:
                tot["sampled"] += float(_sampled_success(game, method, Tensor(logits), cands, t,
                                                         rng).sum())
    game.receiver_rows = rows           # evaluation is not training work
    n = len(target)
    sampled = tot["acc"] if method in MARGINALISED else tot["sampled"]
    return {"success": tot["acc"] / n, "acc_argmax": tot["acc_argmax"] / n,
            "success_argmax": tot["acc"] / n, "success_sampled": sampled / n,
            "loss": tot["loss"] / n, **common.summarize_calls(np.concatenate(calls), prefix="calls_")}


# =========================================================================== run

def load_features(args, parser):
    """The FeatureSet of the run: ``--features`` or the synthetic stand-in."""
    try:
        if args.features:
            return sd.load_features_npz(args.features)
        return sd.make_synthetic_features(seed=args.data_seed, n_concepts=args.n_concepts,
                                          per_concept=args.per_concept, dim=args.feature_dim,
                                          variation=args.variation)
    except ValueError as exc:
        common.cli_error(parser, str(exc))


def data_source(args):
    """``config.json``'s record of the features: the ``--features`` file and its SHA-256,
    or the synthetic stand-in's seed."""
    if not args.features:
        return {"dataset": "synthetic", "data_seed": args.data_seed}
    path = Path(args.features).resolve()
    digest = hashlib.sha256(path.read_bytes()).hexdigest()
    return {"dataset": "features", "dir": str(path.parent), "sha256": {path.name: digest}}


def _config(args, lr, coeff, data):
    keys = ("method", "seed", "steps", "steps_per_epoch", "batch_size", "game_size", "vocab",
            "hidden", "embedding", "activation", "sender_temperature", "features", "data_seed",
            "n_concepts", "per_concept", "feature_dim", "variation", "val_games", "max_test",
            "dtype", "backend", "sfe_plus_baseline")
    cfg = {k: getattr(args, k) for k in keys}
    cfg.update(lr=lr, entropy_coeff=coeff, experiment="signal_game", label=args.method,
               n_images=int(len(data.features)), n_features=int(data.features.shape[1]),
               n_data_concepts=data.n_concepts)
    if args.features:
        cfg["features"] = str(Path(args.features).resolve())
    return cfg


def train(args, parser=None, log=None):
    """Run the experiment of parsed ``args``; returns the test record.  ``--out`` is
    locked meanwhile (:func:`experiments.common.run_directory`)."""
    log = sys.stderr if log is None else log      # the stderr of the call, not of the import
    xp = common.select_backend(args.backend, parser)
    with common.run_directory(args.out, parser, resume=args.resume,
                              overwrite=getattr(args, "overwrite", False)) as out:
        return _train(args, parser, log, xp, out)


def _train(args, parser, log, xp, out):
    """:func:`train` with ``out`` locked."""
    dtype = np.dtype(args.dtype)
    lr_default, coeff_default = PAPER_SETTINGS[args.method]
    lr = args.lr if args.lr is not None else lr_default
    coeff = args.entropy_coeff if args.entropy_coeff is not None else coeff_default
    data = load_features(args, parser)
    if args.game_size > data.n_concepts:
        common.cli_error(parser, f"--game-size {args.game_size} needs at least that many concepts; "
                                 f"the features have {data.n_concepts}")
    config = _config(args, lr, coeff, data)
    if args.resume:
        common.check_resume(out, config, parser, "steps")
    x = xp.asarray(data.features.astype(dtype, copy=False))
    val = sd.fixed_games(data, args.val_games, args.game_size, sd.VALIDATION_SEED)
    test = sd.fixed_games(data, args.max_test, args.game_size, sd.TEST_SEED)
    rng = np.random.default_rng(args.seed)
    game = Game(rng, x.shape[1], xp=xp, dtype=dtype, hidden=args.hidden, vocab=args.vocab,
                embedding=args.embedding, activation=args.activation,
                temperature=args.sender_temperature,
                message_init="linear" if args.method in ("gumbel", "st-gumbel") else "embedding")
    opt = Adam(game.parameters(), lr=lr)
    est = make_estimator_for(args.method, args.sfe_plus_baseline)
    step, best = 0, {"val_success": None}
    if args.resume:
        ck = common.load_checkpoint(common.resume_checkpoint(out))
        game.load_state_dict(ck["model"])
        opt.load_state_dict(ck["optimizer"])
        est.load_state_dict(ck["estimator"])
        rng.bit_generator.state = ck["rng"]
        step, best = int(ck["step"]), dict(ck["best"])
        if "val_acc" in best:                      # a checkpoint from before the vocabulary change
            best["val_success"] = best.pop("val_acc")
    common.write_json(out / "config.json", {**config, "data": data_source(args)})
    spe = args.steps_per_epoch
    # The test phase: two passes (last and best model) over the test games, in validation passes.
    clock = common.RunClock(args.steps, step, -(-(args.steps - step) // spe),
                            test_cost=2 * args.max_test / args.val_games)
    with common.MetricsLog(out / "metrics.jsonl", keep_epochs=step // spe) as metrics:
        while step < args.steps:
            t0 = time.perf_counter()
            n = min(spe, args.steps - step)
            record = _train_steps(game, opt, est, args, x, data, rng, coeff, n, step, clock)
            step += n
            eval_start = time.perf_counter()
            ev = evaluate(game, args.method, x, *val, chunk=args.eval_batch_size,
                          rng=np.random.default_rng([args.seed, 1]))
            clock.add_eval(time.perf_counter() - eval_start)
            record = {"epoch": -(-step // spe), "step": step, **record,
                      **{f"val_{k}": v for k, v in ev.items()}, "seconds": time.perf_counter() - t0}
            metrics.log(record)
            if best["val_success"] is None or record["val_success"] > best["val_success"]:
                best = {"val_success": record["val_success"], "step": step}
                common.save_checkpoint(out / "best.npz", {"step": step, "model": game.state_dict()})
            common.save_checkpoint(out / "last.npz", {
                "step": step, "model": game.state_dict(), "optimizer": opt.state_dict(),
                "estimator": est.state_dict(), "rng": rng.bit_generator.state, "best": best})
            print(f"step {step}: val_success={record['val_success']:.4f} calls={record['calls_mean']:.2f} "
                  f"run ETA {common.format_seconds(clock.eta() or 0.0)}",
                  file=log, flush=True)
    test_start, test_cpu = time.perf_counter(), time.process_time()
    result = _test(game, args, x, test, out, best)
    result.update(common.run_seconds(common.read_metrics(out / "metrics.jsonl"), test_start,
                                     test_cpu))
    common.write_json(out / "test.json", result)
    plot_run_or_explain(out, log)
    print(f"test: success {result.get('test_success', float('nan')):.4f} (best step "
          f"{result.get('best_step')}), last model {result['last_test_success']:.4f}, calls "
          f"{result['last_test_calls_mean']:.2f}, random guess {result['random_guess']:.4f}",
          file=log, flush=True)
    return result


def _train_steps(game, opt, est, args, x, data, rng, coeff, n, step0, clock=None):
    """``n`` optimisation steps; returns the epoch's training metrics."""
    losses, ents, calls = [], [], []
    bar = common.progress(range(n), total=n, desc=f"steps {step0 + 1}-{step0 + n}", clock=clock,
                          log_every=getattr(args, "log_every", 50))
    for _ in bar:
        images, target = sd.sample_games(data, args.batch_size, args.game_size, rng)
        opt.zero_grad()
        loss, e = step_objective(game, est, args.method, x, images, target, rng, coeff)
        loss.backward()
        opt.step()
        losses.append(float(to_numpy(e.loss).mean()))
        ents.append(float(to_numpy(e.entropy.data).mean()))
        calls.append(to_numpy(e.calls))
        bar.set_postfix(loss=losses[-1], calls=float(calls[-1].mean()))
    return {"train_loss": float(np.mean(losses)), "entropy": float(np.mean(ents)),
            **common.summarize_calls(np.concatenate(calls), prefix="calls_")}


def _test(game, args, x, test, out, best):
    """Test games with the last model and the best-validation one (``test.json``)."""
    last = evaluate(game, args.method, x, *test, chunk=args.eval_batch_size,
                    rng=np.random.default_rng([args.seed, 2]),
                    progress_desc="test (last model)")
    result = {"last_step": int(args.steps), **{f"last_test_{k}": v for k, v in last.items()}}
    if (out / "best.npz").exists():
        game.load_state_dict(common.load_checkpoint(out / "best.npz")["model"])
        result.update(best_step=int(best["step"]), best_val_success=best["val_success"],
                      **{f"test_{k}": v for k, v in evaluate(
                          game, args.method, x, *test, chunk=args.eval_batch_size,
                          rng=np.random.default_rng([args.seed, 2]),
                          progress_desc="test (best model)").items()})
    result["random_guess"] = 1.0 / args.game_size
    return result


# =========================================================================== CLI

def build_parser():
    """The command-line parser (bad values exit 2 with one line)."""
    d = sd.SYNTHETIC_DEFAULTS
    p = common.make_parser("Signal game with 16 candidates (paper §5.2).", prog=PROG)
    p.add_argument("--method", choices=METHODS, default="sparsemax",
                   help="how the sender's E_q[loss] is trained: sparse marginalisation (sparsemax) "
                        "or sampling / relaxation (the others)")
    common.add_backend_arg(p)
    common.add_seed_arg(p)
    common.add_out_arg(p)
    common.add_resume_arg(p)
    common.add_dtype_arg(p)
    common.add_sfe_plus_baseline_arg(p)
    p.add_argument("--steps", type=common.positive_int, default=50_000, help="training steps")
    p.add_argument("--steps-per-epoch", type=common.positive_int, default=100,
                   help="steps between validations / checkpoints (the authors' epoch)")
    p.add_argument("--batch-size", type=common.positive_int, default=64, help="games per step")
    p.add_argument("--lr", type=common.positive_float, default=None,
                   help="Adam learning rate (default: the method's, docs/authors.md)")
    p.add_argument("--entropy-coeff", type=common.nonnegative_float, default=None,
                   help="sender entropy bonus (default: the method's, docs/authors.md)")
    p.add_argument("--game-size", type=common.int_at_least(2), default=16,
                   help="candidates per game (>= 2)")
    p.add_argument("--vocab", type=common.positive_int, default=256, help="sender vocabulary")
    p.add_argument("--hidden", type=common.positive_int, default=512, help="sender hidden size")
    p.add_argument("--embedding", type=common.positive_int, default=256, help="receiver embedding")
    p.add_argument("--activation", choices=("tanh", "relu"), default="tanh", help="sender nonlinearity")
    p.add_argument("--sender-temperature", type=common.positive_float, default=10.0,
                   help="sender logits are divided by this")
    common.add_eval_args(p, eval_batch_size=512, eval_help="games per batch for validation and test")
    p.add_argument("--val-games", type=common.positive_int, default=1024,
                   help="fixed validation games (drawn in order from the validation seed)")
    common.add_argument_with_alias(p, "--max-test", "--test-games", metavar="N",
                                   type=common.positive_int, default=9984,
                                   help="fixed test games (the first N drawn from the test seed)")
    p.add_argument("--features", metavar="FILE.npz", default=None,
                   help="real features: arrays features (N, F) and concepts (N,)")
    p.add_argument("--data-seed", type=common.nonnegative_int, default=0,
                   help="seed of the synthetic features")
    p.add_argument("--n-concepts", type=common.positive_int, default=d["n_concepts"],
                   help="concepts of the synthetic features (ignored with --features)")
    p.add_argument("--per-concept", type=common.positive_int, default=d["per_concept"],
                   help="synthetic images per concept (ignored with --features)")
    p.add_argument("--feature-dim", type=common.positive_int, default=d["dim"],
                   help="dimension of the synthetic features (ignored with --features)")
    p.add_argument("--variation", type=common.nonnegative_float, default=d["variation"],
                   help="within-concept variation scale of the synthetic features")
    return p


def main(argv=None):
    """CLI entry point."""
    parser = build_parser()
    args = parser.parse_args(argv)
    if args.out is None:
        common.cli_error(parser, "--out DIR is required")
    if args.features and not Path(args.features).is_file():
        common.cli_error(parser, f"--features {args.features}: no such file")
    train(args, parser)
    return 0


if __name__ == "__main__":
    sys.exit(main())
