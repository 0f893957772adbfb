"""Bit-vector VAE on Fashion-MNIST (paper §5.3), every estimator of the paper.

    python -m experiments.bitvae --method topk --bits 32 --out runs/bitvae_topk32 \\
        [--backend cupy] [--epochs 100] [--max-train N] [--nll-samples 1024] [--resume]

Faithful to the authors' settings (docs/authors.md, Bit-vector VAE): model and split as theirs
(train = first 55,000 training images, reshuffled every epoch; validation =
the last 5,000; test = the official 10,000), Adam without weight decay, seed
42, lr and batch size by method and D from their table (D <= 64 takes the
D = 32 column, larger D the D = 128 one), loss per example
``Σ_{z∈supp} π(z)(-log p(x|z)) - H(π)``, and the checkpoint with the best
validation ELBO is the one tested.  ``--max-train N`` takes the first N
training images and the first ``min(5000, max(N // 10, 64))`` validation images.

Outputs in ``--out``: ``config.json``; ``metrics.jsonl`` (one line per epoch:
train/validation ELBO, validation rate and distortion in nats, decoder calls
per training example -- mean, median, p10/25/75/90 -- seconds, and the collapse monitor:
``frozen_steps``, the fraction of steps whose gradient w.r.t. the encoder scores was
exactly 0 for the whole batch, and ``single_vertex_rows``, the fraction of examples whose
support had one assignment; an epoch with every step frozen prints one warning line);
``best.npz`` / ``last.npz`` checkpoints (atomic); ``test.json`` (``test_elbo``,
``test_rate``, ``test_distortion``, ``test_calls_*``, the NLL in bits/dim by the shared
importance-sampling estimator, ``test_nll_bits_per_dim`` -- with its effective sample size
per image, ``test_nll_ess`` -- and by the authors' one, ``test_authors_nll_bits_per_dim``;
``train_seconds``, and ``seconds`` / ``cpu_seconds`` of the test phase); PNG plots.  Options a
method does not use (``--k`` outside topk, ``--budget`` outside sparsemap-budget, ...) are ignored
silently.  ``--resume`` continues from
``last.npz`` and reproduces an uninterrupted run exactly on NumPy.

BLAS threads: run as a script, OPENBLAS_NUM_THREADS defaults to 1 (set it to
override); the fused decoder head is written for one core per process.

Exit status: 0 done; 1 the run stopped on a non-finite loss (the last good
checkpoint is kept); 2 bad input (an option, a missing or corrupt dataset
file, a checkpoint that does not match the options, an ``--out`` another run holds or that holds a
run while neither ``--resume`` nor ``--overwrite`` is given), one line on stderr.
"""
import os

if __name__ == "__main__":
    # Before NumPy loads OpenBLAS: its threads spin on the head's small GEMMs, and on a
    # busy machine that made a step 20x slower (docs/results.md).  Override freely.
    os.environ.setdefault("OPENBLAS_NUM_THREADS", "1")

import math
import platform
import subprocess
import sys
import time
from pathlib import Path

import numpy as np

import refimpl
from experiments import common
from experiments.plot import plot_run_or_explain
from experiments.bitvae_model import BitVAE, evaluate
from nets import Adam
from nets.estimators import NonFiniteLossError, make_estimator
from refimpl.backend import to_numpy

PROG = "python -m experiments.bitvae"
METHODS = ("topk", "sparsemap", "sparsemap-budget", "sfe", "sfe-plus", "gumbel", "st-gumbel")
SPARSE = ("topk", "sparsemap", "sparsemap-budget")
# The authors' (lr, batch size) by method, for D = 32 and D = 128 (docs/authors.md, Bit-vector VAE).
PAPER_HPARAMS = {
    "topk": {32: (0.002, 64), 128: (0.001, 64)},
    "sparsemap": {32: (0.002, 64), 128: (0.002, 16)},
    "sparsemap-budget": {32: (0.002, 64), 128: (0.002, 16)},
    "sfe": {32: (0.001, 64), 128: (0.001, 64)},
    "sfe-plus": {32: (0.001, 64), 128: (0.001, 64)},
    "gumbel": {32: (0.001, 64), 128: (0.001, 64)},
    "st-gumbel": {32: (0.001, 64), 128: (0.0005, 64)},
}
N_TRAIN, N_VAL = 55000, 5000
GUMBEL_MIN, GUMBEL_EVERY = 0.5, 1000
GUMBEL_RATE = {32: 1e-5, 128: 1e-4}      # the authors' temperature decay rate, by D column
# Options that must match the checkpoint on --resume (the rest may change).
RESUME_KEYS = ("method", "bits", "k", "budget", "sparsemap_encoding", "sparsemap_init",
               "sfe_plus_baseline", "lr", "batch_size", "seed", "max_train", "dtype", "backend",
               "gumbel_rate")
DECODE_ROWS = {"numpy": 4096, "cupy": 32768}


# =========================================================================== CLI
def build_parser():
    """The argument parser (bad values exit 2 with one line)."""
    p = common.make_parser(__doc__.split("\n")[0], prog=PROG)
    p.add_argument("--method", choices=METHODS, default="topk",
                   help="how E_q[-log p(x|z)] is trained: sparse marginalisation (topk, sparsemap, "
                        "sparsemap-budget) or sampling (sfe, sfe-plus, gumbel, st-gumbel)")
    p.add_argument("--bits", type=common.positive_int, default=32, help="latent bits D")
    p.add_argument("--k", type=common.positive_int, default=10,
                   help="topk: assignments kept (<= 2^D); ignored by other methods")
    p.add_argument("--budget", type=common.positive_int, default=None,
                   help="sparsemap-budget: at most B bits on (default D/2; 1 <= B <= D); ignored "
                        "by other methods")
    p.add_argument("--sparsemap-encoding", choices=("binary", "onehot"), default="onehot",
                   help="sparsemap(-budget) scores: the authors' one-hot encoding, i.e. "
                        "SparseMAP((t + 1)/2) (default), or binary a_z in {0,1}^D, the paper's "
                        "literal form, whose encoder gradient is exactly 0 once no score lies in "
                        "(0, 1) -- it froze the encoder in short runs (docs/results.md)")
    p.add_argument("--sparsemap-init", choices=("oracle", "random"), default="oracle",
                   help="sparsemap(-budget): start the active set at the oracle's vertex "
                        "(default) or at a random vertex, as the authors' code")
    common.add_sfe_plus_baseline_arg(p)
    common.add_common_args(p, epochs=100, batch_size=None)
    p.add_argument("--nll-samples", type=common.nonnegative_int, default=1024,
                   help="importance samples per test image for the NLL (0: skip the NLL)")
    p.add_argument("--max-test", type=common.positive_int, default=None,
                   help="evaluate only the first N test images (quick runs)")
    p.add_argument("--gumbel-rate", type=common.positive_float, default=None,
                   help="Gumbel temperature tau = max(0.5, exp(-rate * step)), step rounded down "
                        "to a multiple of 1000 (default: the authors' per D, 1e-5 for D <= 64 and "
                        "1e-4 above)")
    common.add_eval_args(p, eval_batch_size=256, eval_help="examples per batch for validation and test",
                         log_help="steps between progress-bar updates and loss checks (on a GPU, 2 "
                                  "host syncs each; every step also has 1, the estimator's input check)")
    for action in p._actions:
        if action.dest == "batch_size":
            action.help = "batch size (default: the paper's value for the method and D)"
    return p


def resolve_args(args, parser):
    """Check cross-option constraints and fill the method defaults (lr, batch, budget)."""
    D = args.bits
    # An option the method does not use is ignored silently (never validated).
    if args.method == "topk" and D < 63 and args.k > 2 ** D:
        common.cli_error(parser, f"--k {args.k} exceeds the 2^D = {2 ** D} assignments of D = {D}")
    if args.budget is None:
        args.budget = max(1, D // 2)
    if args.method == "sparsemap-budget" and args.budget > D:
        common.cli_error(parser, f"--budget {args.budget} must be at most --bits {D}")
    if args.gumbel_rate is None:
        args.gumbel_rate = GUMBEL_RATE[32 if D <= 64 else 128]
    if args.max_train is not None and args.max_train > N_TRAIN:
        common.cli_error(parser, f"--max-train {args.max_train} exceeds the {N_TRAIN} training images")
    if args.max_test is not None and args.max_test > 10000:
        common.cli_error(parser, f"--max-test {args.max_test} exceeds the 10000 test images")
    lr, batch = PAPER_HPARAMS[args.method][32 if D <= 64 else 128]
    args.lr = lr if args.lr is None else args.lr
    args.batch_size = batch if args.batch_size is None else args.batch_size
    return args


def make_method_estimator(args):
    """The training estimator of ``args.method`` (nets.estimators), with only its options."""
    return make_estimator(
        args.method, "bits", k=args.k if args.method == "topk" else None,
        budget=args.budget if args.method == "sparsemap-budget" else None,
        sparsemap_encoding=args.sparsemap_encoding if args.method in SPARSE[1:] else None,
        sparsemap_init=args.sparsemap_init if args.method in SPARSE[1:] else None,
        sfe_plus_baseline=args.sfe_plus_baseline if args.method == "sfe-plus" else None,
        temperature=1.0 if "gumbel" in args.method else None)


def gumbel_temperature(step, rate):
    """τ = max(0.5, exp(-rate · s)), s = step rounded down to a multiple of 1000."""
    return max(GUMBEL_MIN, math.exp(-rate * (step // GUMBEL_EVERY) * GUMBEL_EVERY))


# =========================================================================== data
def val_size(max_train):
    """Validation images used: all 5,000, or min(5000, max(N // 10, 64)) with --max-train N."""
    return N_VAL if max_train is None else min(N_VAL, max(max_train // 10, 64))


def load_splits(args, xp, parser):
    """uint8 (N, 784) arrays on the device: train, val, test (exit 2 on a data error)."""
    from experiments.data import DataError, load_images  # noqa: PLC0415
    try:
        train = load_images("fashion-mnist", "train", args.data_dir, args.download)
        test = load_images("fashion-mnist", "test", args.data_dir, args.download)
    except (DataError, ValueError, OSError) as exc:
        common.cli_error(parser, f"cannot load Fashion-MNIST: {exc}")
    n_train = args.max_train or N_TRAIN
    splits = {"train": train[:n_train], "val": train[N_TRAIN:N_TRAIN + val_size(args.max_train)],
              "test": test[:args.max_test or len(test)]}
    return {k: xp.asarray(v.reshape(len(v), -1)) for k, v in splits.items()}


# =========================================================================== one step
def batch_objective(model, estimator, images, rng, t=None):
    """-> (objective Tensor, Estimate): objective = mean_b [surrogate_b - H(π_b)] (entropy
    coefficient 1) for uint8 images (B, 784); the loss of example b is ``loss_b - H_b``.
    ``t``: the encoder scores of ``images`` if already computed (the collapse monitor keeps
    their gradient)."""
    t = model.encode(images) if t is None else t

    def loss_fn(idx, z):
        return model.decode_nll(z, images[idx])

    est = estimator(t, loss_fn, rng)
    return est.surrogate - est.entropy.mean(), est


class NonFiniteLoss(RuntimeError):
    """Training produced a NaN or infinite loss."""


def encoder_frozen(t):
    """Device bool: is the gradient w.r.t. the encoder scores ``t`` (a Tensor whose grad was
    retained) exactly zero for the whole batch?  (No gradient reaching t counts as zero.)"""
    if t.grad is None:
        return t.xp.asarray(True)
    return ~t.xp.any(t.grad != 0)


def collapse_monitor(frozen, steps, calls, sparse):
    """The epoch's collapse figures: ``frozen_steps`` = frozen / steps (steps whose gradient
    w.r.t. the encoder scores was exactly zero for the whole batch) and, for the sparse
    methods, ``single_vertex_rows`` = the fraction of training examples whose support had one
    assignment (None for the sampling methods)."""
    calls = to_numpy(calls)
    return {"frozen_steps": float(frozen) / steps,
            "single_vertex_rows": float((calls == 1).mean()) if sparse else None}


FROZEN_WARNING = ("warning: epoch {epoch}: the gradient w.r.t. the encoder scores was exactly 0 "
                  "at every step (every support a single vertex): the encoder is frozen and only "
                  "the decoder learns; use --sparsemap-encoding onehot, or a smaller --lr")


def train_epoch(run, images, epoch, args):
    """One pass over ``images`` in a fresh random order; returns the epoch's device sums:
    loss sum, calls per example (N,), and the number of steps whose encoder-score gradient
    was exactly zero (see :func:`collapse_monitor`)."""
    xp, B = run.xp, args.batch_size
    N = images.shape[0]
    order = xp.asarray(run.rng_data.permutation(N))
    steps = -(-N // B)
    loss_sum, calls = xp.zeros((), dtype=np.float64), xp.zeros(N, dtype=np.int64)
    frozen = xp.zeros((), dtype=np.int64)
    bar = common.progress(range(steps), total=steps, desc=f"epoch {epoch}/{args.epochs}",
                          log_every=args.log_every, clock=run.clock)
    for s in bar:
        if "gumbel" in args.method:
            run.estimator.temperature = gumbel_temperature(run.step, args.gumbel_rate)
        x = images[order[s * B:(s + 1) * B]]
        try:
            t = run.model.encode(x).retain_grad()
            objective, est = batch_objective(run.model, run.estimator, x, run.rng_noise, t=t)
        except NonFiniteLossError as exc:
            raise NonFiniteLoss(f"epoch {epoch}, step {s + 1} (global step {run.step + 1}): "
                                f"{exc}") from None
        if xp is np and not math.isfinite(float(objective.data)):
            raise NonFiniteLoss(f"epoch {epoch}, step {s + 1} (global step {run.step + 1}): "
                                f"loss = {float(objective.data)}")
        run.opt.zero_grad()
        objective.backward()
        frozen += encoder_frozen(t)
        run.opt.step()
        run.step += 1
        loss_sum += (est.loss - est.entropy.data).sum()
        calls[s * B:s * B + x.shape[0]] = est.calls
        if (s + 1) % args.log_every == 0 or s + 1 == steps:           # log point: 2 host syncs
            done = min((s + 1) * B, N)
            mean_loss = float(loss_sum) / done
            if not math.isfinite(mean_loss):
                raise NonFiniteLoss(f"epoch {epoch}, by step {s + 1} (global step {run.step}): "
                                    f"mean loss = {mean_loss}")
            bar.set_postfix(loss=mean_loss, calls=float(calls[:done].mean()))
    return loss_sum, calls, frozen


# =========================================================================== evaluation
def eval_rng(seed, what, epoch=0):
    """A fresh, deterministic noise stream for evaluation (independent of training)."""
    return np.random.default_rng([seed, {"val": 1, "test": 2}[what], epoch])


# =========================================================================== state
class Run:
    """Everything a checkpoint holds: model, optimizer, estimator baseline, RNGs, counters."""

    def __init__(self, args, xp):
        self.xp = xp
        seeds = np.random.SeedSequence(args.seed).spawn(3)
        self.model = BitVAE(args.bits, np.random.default_rng(seeds[0]), xp=xp,
                            dtype=np.dtype(args.dtype))
        self.opt = Adam(self.model.parameters(), lr=args.lr)
        self.estimator = make_method_estimator(args)
        self.rng_data, self.rng_noise = np.random.default_rng(seeds[1]), np.random.default_rng(seeds[2])
        self.epoch, self.step, self.best_val, self.best_epoch = 0, 0, -math.inf, 0
        self.clock = None          # a common.RunClock once training starts (not checkpointed)

    def state_dict(self, args):
        opt = self.opt.state_dict()
        return {"config": {k: getattr(args, k) for k in RESUME_KEYS}, "epoch": self.epoch,
                "step": self.step, "best_val_elbo": self.best_val, "best_epoch": self.best_epoch,
                "model": self.model.state_dict(), "optimizer": opt,
                "estimator": self.estimator.state_dict(),
                "rng_data": self.rng_data.bit_generator.state,
                "rng_noise": self.rng_noise.bit_generator.state}

    def load_state_dict(self, state):
        self.model.load_state_dict(state["model"])
        self.opt.load_state_dict(state["optimizer"])
        self.estimator.load_state_dict(state["estimator"])
        self.rng_data.bit_generator.state = state["rng_data"]
        self.rng_noise.bit_generator.state = state["rng_noise"]
        self.epoch, self.step = int(state["epoch"]), int(state["step"])
        self.best_val, self.best_epoch = float(state["best_val_elbo"]), int(state["best_epoch"])


def resume(run, args, out, parser):
    """Load ``out/last.npz`` into ``run`` (exit 2 if missing, unreadable or mismatched)."""
    try:
        state = common.load_checkpoint(out / "last.npz")
    except FileNotFoundError:
        common.cli_error(parser, f"--resume: no checkpoint {out / 'last.npz'}; run without --resume")
    except ValueError as exc:
        common.cli_error(parser, f"--resume: {exc}")
    wanted = {k: getattr(args, k) for k in RESUME_KEYS}
    diff = [f"--{k.replace('_', '-')} {state['config'].get(k)!r} (checkpoint) vs {v!r}"
            for k, v in wanted.items() if state["config"].get(k) != v]
    if diff:
        common.cli_error(parser, f"--resume: options differ from the checkpoint's: {'; '.join(diff)}")
    run.load_state_dict(state)


def write_config(out, args):
    """``config.json``: every option (resolved) and the versions that ran."""
    try:
        commit = subprocess.run(["git", "rev-parse", "HEAD"], capture_output=True, text=True,
                                cwd=Path(__file__).parent, timeout=10).stdout.strip() or None
    except (OSError, subprocess.SubprocessError):
        commit = None
    versions = {"python": platform.python_version(), "numpy": np.__version__,
                "sparsemarg": refimpl.__version__, "git_commit": commit}
    if args.backend == "cupy":
        versions["cupy"] = sys.modules["cupy"].__version__
    label = args.method + (" (onehot)" if args.method in SPARSE[1:]
                           and args.sparsemap_encoding == "onehot" else "")
    from experiments.data import data_source  # noqa: PLC0415
    config = dict(vars(args), out=str(out), data_dir=args.data_dir, label=label,
                  data=data_source("fashion-mnist", ("images",), args.data_dir),
                  train_size=args.max_train or N_TRAIN, val_size=val_size(args.max_train),
                  versions=versions, argv=sys.argv[1:])
    common.write_json(out / "config.json", config)


# =========================================================================== main
def train(run, data, args, out, log):
    """Epochs ``run.epoch + 1 .. args.epochs``: train, validate, log, checkpoint."""
    D, n_train = args.bits, data["train"].shape[0]
    steps = -(-n_train // args.batch_size)
    run.clock = common.RunClock(args.epochs * steps, run.epoch * steps, args.epochs - run.epoch,
                                test_cost=test_cost(data, args, calls=args.k))
    while run.epoch < args.epochs:
        epoch, start, cpu = run.epoch + 1, time.perf_counter(), time.process_time()
        loss_sum, calls, frozen = train_epoch(run, data["train"], epoch, args)
        val_start = time.perf_counter()
        val = evaluate(run.model, run.estimator, args.method in SPARSE, data["val"],
                       eval_rng(args.seed, "val", epoch), args.eval_batch_size,
                       DECODE_ROWS[args.backend])
        run.clock.add_eval(time.perf_counter() - val_start)
        run.clock.test_cost = test_cost(data, args, calls=float(val["calls"].mean()))
        record = {"epoch": epoch, "step": run.step,
                  "train_elbo": -float(loss_sum) / n_train - D * math.log(2),
                  "val_elbo": val["elbo"], "rate": val["rate"], "distortion": val["distortion"],
                  **common.summarize_calls(to_numpy(calls), prefix="calls_"),
                  "val_calls_mean": float(val["calls"].mean()),
                  **collapse_monitor(frozen, steps, calls, args.method in SPARSE)}
        if "gumbel" in args.method:
            record["temperature"] = run.estimator.temperature
        run.epoch = epoch
        if val["elbo"] > run.best_val:
            run.best_val, run.best_epoch = val["elbo"], epoch
            common.save_checkpoint(out / "best.npz", run.state_dict(args))
        record["seconds"] = time.perf_counter() - start
        record["cpu_seconds"] = time.process_time() - cpu
        log.log(record)
        common.save_checkpoint(out / "last.npz", run.state_dict(args))
        print(f"epoch {epoch}: train ELBO {record['train_elbo']:.2f}, val ELBO {val['elbo']:.2f} "
              f"(rate {val['rate']:.2f}, distortion {val['distortion']:.2f}), calls "
              f"{record['calls_mean']:.2f}, {record['seconds']:.1f}s, run ETA "
              f"{common.format_seconds(run.clock.eta() or 0.0)}", file=sys.stderr, flush=True)
        if record["frozen_steps"] == 1.0:
            print(FROZEN_WARNING.format(epoch=epoch), file=sys.stderr, flush=True)


def test_cost(data, args, calls):
    """The test phase's cost in validation passes, for the run's ETA (rough): test images
    over validation images, times the rows decoded per image, ``calls`` for the ELBO plus
    twice ``--nll-samples`` for the two NLL estimators, over ``calls``."""
    ratio = data["test"].shape[0] / max(1, data["val"].shape[0])
    calls = max(1.0, calls)
    return ratio * (calls + 2 * args.nll_samples) / calls


def test(run, data, args, out):
    """Evaluate the best checkpoint on the test set; write ``test.json``."""
    best = common.load_checkpoint(out / "best.npz")
    run.model.load_state_dict(best["model"])
    start, cpu = time.perf_counter(), time.process_time()
    res = evaluate(run.model, run.estimator, args.method in SPARSE, data["test"],
                   eval_rng(args.seed, "test"), args.eval_batch_size, DECODE_ROWS[args.backend],
                   nll_samples=args.nll_samples,
                   progress_desc="test" + (f" (NLL, {args.nll_samples} samples)"
                                           if args.nll_samples else ""))
    result = {"method": args.method, "bits": args.bits, "best_epoch": run.best_epoch,
              "test_examples": int(data["test"].shape[0]), "test_elbo": res["elbo"],
              "test_rate": res["rate"], "test_distortion": res["distortion"],
              **common.summarize_calls(res["calls"], "test_calls_"),
              "nll_samples": args.nll_samples,
              "nll_estimator": ("defensive mixture r = (q + Bernoulli(sigmoid(t)) + uniform)/3"
                                if args.method in SPARSE else
                                "defensive mixture r = 2/3 Bernoulli(sigmoid(t)) + 1/3 uniform")
                               + ", uniform prior; logsumexp of importance weights (each <= 3)",
              "test_nll_bits_per_dim": res.get("nll_bits_per_dim"), "test_nll_ess": res.get("nll_ess"),
              "test_authors_nll_bits_per_dim": res.get("authors_nll_bits_per_dim"),
              **common.run_seconds(common.read_metrics(out / "metrics.jsonl"), start, cpu)}
    common.write_json(out / "test.json", result)
    return result


def main(argv=None):
    parser = build_parser()
    args = resolve_args(parser.parse_args(argv), parser)
    xp = common.select_backend(args.backend, parser)
    with common.run_directory(args.out, parser, resume=args.resume,
                              overwrite=args.overwrite) as out:
        return _main(args, parser, xp, out)


def _main(args, parser, xp, out):
    """The run, with ``out`` locked (see :func:`experiments.common.run_directory`)."""
    data = load_splits(args, xp, parser)
    run = Run(args, xp)
    if args.resume:
        resume(run, args, out, parser)
    write_config(out, args)
    try:
        with common.MetricsLog(out / "metrics.jsonl", keep_epochs=run.epoch) as log:
            train(run, data, args, out, log)
    except NonFiniteLoss as exc:
        kept = (f"the last good checkpoint {out / 'last.npz'} (epoch {run.epoch}) is kept"
                if run.epoch else "no checkpoint was written")
        print(f"{PROG}: error: non-finite loss at {exc}; stopping; {kept}", file=sys.stderr)
        return 1
    result = test(run, data, args, out)
    plot_run_or_explain(out, sys.stderr, PROG)
    print(f"test: ELBO {result['test_elbo']:.2f}, NLL {result['test_nll_bits_per_dim']} bits/dim "
          f"(authors' estimator {result['test_authors_nll_bits_per_dim']}), calls "
          f"{result['test_calls_mean']:.2f}", file=sys.stderr)
    return 0


if __name__ == "__main__":
    sys.exit(main())
