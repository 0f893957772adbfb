"""One vocabulary across the three experiments: the shared option names in each
``--help``, every option with help text, old names as deprecated aliases, and the
numeric options range-checked (exit 2, one line)."""
import re
import subprocess
import sys

import pytest

EXPERIMENTS = ("bitvae", "ssvae", "signal_game")
# Shared by all three (the same name for the same thing).
SHARED = {"--seed", "--out", "--resume", "--overwrite", "--backend", "--batch-size", "--lr",
          "--max-test", "--eval-batch-size", "--log-every", "--dtype", "--sfe-plus-baseline",
          "--method"}
# Shared where the experiment has the thing (signal_game: synthetic or --features data,
# games sampled afresh each step, so no --data-dir / --max-train; one name each for epochs/steps).
WHERE_IT_APPLIES = {"bitvae": {"--data-dir", "--max-train", "--epochs"},
                    "ssvae": {"--data-dir", "--max-train", "--epochs"},
                    "signal_game": {"--steps", "--steps-per-epoch"}}
DEPRECATED = {"ssvae": ("--max-eval", "--max-test"), "signal_game": ("--test-games", "--max-test")}


def _help(experiment):
    out = subprocess.run([sys.executable, "-m", f"experiments.{experiment}", "--help"],
                         capture_output=True, text=True, timeout=120, check=True)
    return out.stdout


def _options(text):
    """``{option: help text}`` of every option line in an argparse ``--help``."""
    options, current = {}, None
    for line in text.splitlines():
        m = re.match(r"^  (-[-\w]+(?: [A-Z_.]+| \{[^}]*\})?(?:, -[-\w]+(?: [A-Z_.]+| \{[^}]*\})?)*)"
                     r"(?:\s{2,}(.*))?$", line)
        if m:
            names = [part.split()[0] for part in m.group(1).split(", ")]
            current = names[0]
            options[current] = m.group(2) or ""
            for alias in names[1:]:
                options.setdefault(alias, None)
        elif current and line.startswith("    "):
            options[current] += " " + line.strip()
    return options


@pytest.fixture(scope="module")
def helps():
    return {e: _options(_help(e)) for e in EXPERIMENTS}


@pytest.mark.parametrize("experiment", EXPERIMENTS)
def test_shared_names(helps, experiment):
    missing = (SHARED | WHERE_IT_APPLIES[experiment]) - set(helps[experiment])
    assert not missing, f"{experiment} --help lacks {sorted(missing)}"


def test_epochs_or_steps_one_name_each(helps):
    for experiment, opts in helps.items():
        assert ("--epochs" in opts) != ("--steps" in opts), experiment


@pytest.mark.parametrize("experiment", EXPERIMENTS)
def test_every_option_has_help(helps, experiment):
    bare = [name for name, text in helps[experiment].items()
            if text is not None and len(text.strip()) < 5 and name not in ("-h",)]
    assert not bare, f"{experiment}: options without help text: {bare}"


@pytest.mark.parametrize("experiment", sorted(DEPRECATED))
def test_deprecated_alias_listed(helps, experiment):
    old, new = DEPRECATED[experiment]
    assert old in helps[experiment] and helps[experiment][old] is None   # listed after `new`
    assert new in helps[experiment]


@pytest.mark.parametrize("experiment", sorted(DEPRECATED))
def test_deprecated_alias_warns_once(experiment, capsys):
    import importlib  # noqa: PLC0415
    module = importlib.import_module(f"experiments.{experiment}")
    old, new = DEPRECATED[experiment]
    args = module.build_parser().parse_args([old, "7", "--out", "x"])
    assert args.max_test == 7
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and old in err[0] and "deprecated" in err[0] and new in err[0]


@pytest.mark.parametrize("experiment, argv", [
    ("signal_game", ["--game-size", "1"]),
    ("signal_game", ["--entropy-coeff", "-1"]),
    ("signal_game", ["--variation", "nan"]),
    ("ssvae", ["--max-train", "99999999"]),
    ("ssvae", ["--max-test", "10001"]),
    ("bitvae", ["--max-train", "99999999"]),
])
def test_out_of_range_exits_2_one_line(tmp_path, experiment, argv):
    out = subprocess.run([sys.executable, "-m", f"experiments.{experiment}", *argv,
                          "--out", str(tmp_path / "run")],
                         capture_output=True, text=True, timeout=120)
    assert out.returncode == 2, out.stderr
    lines = out.stderr.strip().splitlines()
    assert len(lines) == 1 and argv[0] in lines[0], lines


def test_resume_checkpoint_prefers_last_and_accepts_old_name(tmp_path):
    from experiments import common  # noqa: PLC0415
    assert common.resume_checkpoint(tmp_path) is None
    (tmp_path / "checkpoint.npz").write_bytes(b"")
    assert common.resume_checkpoint(tmp_path) == tmp_path / "checkpoint.npz"
    (tmp_path / "last.npz").write_bytes(b"")
    assert common.resume_checkpoint(tmp_path) == tmp_path / "last.npz"
    assert common.renamed_config({"max_eval": 5, "lr": 1.0}) == {"max_test": 5, "lr": 1.0}
    assert common.renamed_config({"test_games": 5}) == {"max_test": 5}
