"""Bad command-line input, table-driven: every option of every sub-command.

Each row is ``(id, argv, exit code, words stderr must contain)``. Every row
must fail with that code, without a traceback, with exactly one line
``curvlab: error: …`` (argparse's usage errors too, pointing to
``--help``). Input errors are
found before anything is written: the results store of the row does not
exist afterwards unless the row says the error comes from the first run
(missing data). Placeholders in ``argv``: ``{store}`` and ``{rep}`` (fresh
per row), ``{file}`` (a regular file), ``{garbage}`` (not SQLite),
``{foreign}`` (an SQLite file with another ``runs`` table), ``{empty}`` (a
curvlab store without comparisons), ``{good}`` (one with a comparison).
"""

import importlib.util
import re
import sqlite3

import pytest
import torch

from curvlab.cli import main
from curvlab.harness.compare import compare
from curvlab.harness.store import Store

CMP = ["compare", "--problem", "quadratic", "--optimizers", "sgd", "--executor", "serial",
       "--store", "{store}", "--report", "none", "--steps", "3"]
ABL = ["ablate", "--problem", "quadratic", "--optimizer", "sgd", "--hparam", "lr",
       "--executor", "serial", "--store", "{store}", "--report", "none", "--steps", "3",
       "--values", "0.1,0.01"]
ABLV = ABL[:5] + ["--vary", "momentum=0,0.9"] + ABL[7:-2]  # the --vary form
REP = ["report", "--store", "{good}", "--out", "{rep}"]
PROF = REP + ["--profile"]
USAGE = "(see `curvlab"  # argparse's usage errors point to --help

# options of RunSettings, shared by compare and ablate: (id, extra argv, words)
SETTINGS = [
    ("steps-0", ["--steps", "0"], ["steps must be a positive integer", "got 0"]),
    ("steps-neg", ["--steps", "-3"], ["steps must be a positive integer"]),
    ("steps-frac", ["--steps", "2.5"], ["argument --steps", "not an integer: '2.5'"]),
    ("steps-text", ["--steps", "many"], ["argument --steps", "not an integer"]),
    ("no-budget", ["--steps", "none", "--seconds", "none"], ["needs a budget"]),
    ("seconds-0", ["--seconds", "0"], ["seconds must be > 0"]),
    ("seconds-nan", ["--seconds", "nan"], ["seconds must be > 0", "nan"]),
    ("seconds-inf", ["--seconds", "inf"], ["seconds must be > 0 (finite)"]),
    ("seconds-text", ["--seconds", "soon"], ["argument --seconds", "not a number"]),
    ("eval-every-0", ["--eval-every", "0"], ["eval_every must be a positive integer"]),
    ("eval-every-frac", ["--eval-every", "2.5"], ["argument --eval-every", "not an integer"]),
    ("seeds-0", ["--seeds", "0"], ["seeds must be a positive integer"]),
    ("seeds-text", ["--seeds", "x"], ["argument --seeds", "not an integer"]),
    ("target-nan", ["--target", "nan"], ["target must be a finite number", "nan"]),
    ("target-inf", ["--target", "inf"], ["target must be a finite number", "inf"]),
    ("target-text", ["--target", "low"], ["argument --target", "not a number"]),
    ("device-tpu", ["--device", "tpu"], ["device must be 'cpu' or 'cuda[:N]'", "'tpu'"]),
    ("device-index", ["--device", "cuda:x"], ["device must be 'cpu' or 'cuda[:N]'"]),
    ("dtype", ["--dtype", "float16"], ["dtype must be one of", "float32", "'float16'"]),
    ("threads-0", ["--threads", "0"], ["threads must be a positive integer"]),
    ("threads-text", ["--threads", "all"], ["argument --threads", "not an integer"]),
    ("schedule", ["--schedule", "step"], ["schedule must be one of", "'step'"]),
    ("schedule-seconds-only", ["--schedule", "cosine", "--steps", "none", "--seconds", "5"],
     ["schedule 'cosine' needs a step budget"]),
    ("warmup-range", ["--warmup", "1.5"], ["warmup must be a fraction in [0, 1)"]),
    ("warmup-constant", ["--warmup", "0.1"], ["warmup applies to the schedules",
                                               "not to 'constant'"]),
    ("ruleset", ["--ruleset", "tuning"], ["ruleset must be one of", "'tuning'"]),
    ("trials-0", ["--trials", "0"], ["trials must be a positive integer"]),
    ("studies-0", ["--studies", "0"], ["studies must be a positive integer"]),
    ("tuning-seed-overlap", ["--tuning-seed", "1", "--seeds", "3"],
     ["tuning seeds 1..1 overlap the evaluation seeds 0..2"]),
    ("tuning-seed-neg", ["--tuning-seed", "-1"], ["tuning_seed must be an integer >= 0"]),
    ("sampler", ["--sampler", "random"], ["sampler must be one of", "'random'"]),
    ("select", ["--select", "loss"], ["select must be one of", "did you mean 'val-loss'"]),
    ("tune-schedule-value", ["--tune-schedule=1"], [USAGE, "ignored explicit argument"]),
    ("batch-size-0", ["--batch-size", "0"], ["batch_size must be a positive integer"]),
    ("batch-size-too-big", ["--batch-size", "100000"], ["batch_size must be in [1, 1843]"]),
    ("fresh-batch-size-text", ["--fresh-batch-size", "big"],
     ["argument --fresh-batch-size", "not an integer"]),
    ("split-seed-neg", ["--split-seed", "-2"], ["split_seed must be an integer >= 0"]),
    ("eval-size-0", ["--eval-size", "0"], ["eval_size must be an integer >= 1, 'full'"]),
    ("eval-size-text", ["--eval-size", "half"], ["argument --eval-size", "not an integer"]),
    ("reference-every-0", ["--reference-every", "0"],
     ["reference_every must be a positive integer"]),
    ("checkpoint-every-0", ["--checkpoint-every", "0"],
     ["checkpoint_every must be a positive integer"]),
    ("checkpoint-memory", ["--checkpoint-every", "5", "--store", ":memory:"],
     ["checkpoint_every needs a store file"]),
    ("run-timeout-0", ["--run-timeout", "0"], ["run_timeout must be > 0"]),
    ("ray-address-without-ray", ["--ray-address", "auto"], ["ray_address 'auto' needs executor 'ray'"]),
    ("small-value", ["--small=yes"], [USAGE, "--small", "ignored explicit argument"]),
    ("data-dir-empty", ["--data-dir", ""], ["data_dir must be a folder path"]),
    ("store-under-file", ["--store", "{file}/s.sqlite"], ["cannot open results store"]),
    ("store-garbage", ["--store", "{garbage}"], ["not an SQLite database"]),
    ("store-foreign", ["--store", "{foreign}"], ["not a curvlab results store", "table runs"]),
    ("executor", ["--executor", "dask"], ["executor must be one of", "'dask'"]),
    ("jobs-0", ["--jobs", "0"], ["jobs must be a positive integer"]),
    ("jobs-text", ["--jobs", "two"], ["argument --jobs", "not an integer"]),
    ("progress-value", ["--progress=1"], [USAGE, "--progress", "ignored explicit argument"]),
    ("name-empty", ["--name", " "], ["name must be a non-empty string"]),
    ("name-missing", ["--name"], [USAGE, "--name", "expected one argument"]),
    ("report-under-file", ["--report", "{file}/rep"], ["cannot create report folder"]),
    ("unknown-option", ["--stpes", "3"], [USAGE, "unrecognized arguments: --stpes"]),
    ("debug-value", ["--debug=1"], [USAGE, "--debug", "ignored explicit argument"]),
]
if not torch.cuda.is_available():
    SETTINGS.append(("device-cuda", ["--device", "cuda"], ["torch sees no CUDA device"]))
if importlib.util.find_spec("ray") is None:
    SETTINGS.append(("executor-ray", ["--executor", "ray"], ["pip install 'curvlab[ray]'"]))

# (id, argv, code, words, store created)
ROWS = [
    ("top-no-command", [], 2, [USAGE, "required: COMMAND"], False),
    ("top-unknown-command", ["frobnicate"], 2, [USAGE, "invalid choice: 'frobnicate'"], False),
    ("list-unknown-option", ["list", "--bogus"], 2, [USAGE, "unrecognized arguments: --bogus"], False),
    ("list-all-value", ["list", "--all=yes"], 2, [USAGE, "--all", "ignored explicit argument"], False),
    ("list-verify-value", ["list", "--verify=1"], 2, [USAGE, "ignored explicit argument"], False),
    ("list-debug-value", ["list", "--debug=1"], 2, [USAGE, "ignored explicit argument"], False),
    ("info-debug-value", ["info", "sgd", "--debug=x"], 2, [USAGE, "ignored explicit"], False),
    ("report-debug-value", REP + ["--debug=1"], 2, [USAGE, "ignored explicit argument"], False),
    ("info-missing-name", ["info"], 2, [USAGE, "required: name"], False),
    ("info-unknown", ["info", "nothing-like-this"], 2, ["unknown optimizer", "available:"], False),
    ("info-close", ["info", "sgdd"], 2, ["did you mean 'sgd'"], False),
    ("info-empty", ["info", ""], 2, ["empty after normalisation"], False),
    # compare's own options
    ("compare-problem-missing", CMP[:1] + CMP[3:], 2, [USAGE, "required: --problem"], False),
    ("compare-problem-unknown", ["compare", "--problem", "nope"] + CMP[3:], 2,
     ["unknown problem 'nope'", "quadratic"], False),
    ("compare-problem-mnist-no-data-dir", ["compare", "--problem", "mnist-mlp"] + CMP[3:], 2,
     ["problem 'mnistmlp': cannot load its data", "--data-dir", "curvlab data"], False),
    ("compare-data-dir-not-a-folder",
     ["compare", "--problem", "mnist-mlp"] + CMP[3:] + ["--data-dir", "{file}"], 2,
     ["cannot load its data", "is not a folder"], False),
    ("compare-optimizers-unknown", CMP[:4] + ["sgdd"] + CMP[5:], 2,
     ["unknown optimizer 'sgdd'", "did you mean 'sgd'"], False),
    ("compare-optimizers-empty", CMP[:4] + [","] + CMP[5:], 2, ["no optimizer given"], False),
    ("compare-optimizers-no-value", CMP[:4] + ["--executor", "serial"], 2,
     [USAGE, "--optimizers", "expected at least one argument"], False),
    ("compare-tune-value", CMP + ["--tune=yes"], 2, [USAGE, "--tune", "ignored explicit"], False),
    ("compare-select", CMP + ["--select", "fast"], 2, ["select must be one of", "'fast'"], False),
    ("compare-tune-contradicts", CMP + ["--tune", "--ruleset", "defaults"], 2,
     ["--tune contradicts --ruleset defaults"], False),
    ("compare-tune-schedule-untuned", CMP + ["--tune-schedule"], 2,
     ["tune_schedule needs tuning"], False),
    ("compare-grid-no-equals", CMP + ["--grid", "sgd.lr"], 2, ["--hp expects NAME=VALUE"], False),
    ("compare-grid-empty", CMP + ["--grid", "sgd.lr="], 2, ["--grid sgd.lr= has no values"],
     False),
    ("compare-grid-gap", CMP + ["--grid", "sgd.lr=0.1,,0.2"], 2, ["lr must be a number", "''"],
     False),
    ("compare-grid-range", CMP + ["--grid", "sgd.lr=0.1,-1"], 2, ["lr must be in", "-1"], False),
    ("compare-grid-not-compared", CMP + ["--grid", "adam.lr=0.1"], 2,
     ["grids given for ['adam']", "not compared"], False),
    ("compare-grid-and-hp", CMP + ["--grid", "sgd.lr=0.1", "--hp", "sgd.lr=0.2"], 2,
     ["sgd: lr both fixed (hparams) and in a grid"], False),
    ("compare-hp-no-equals", CMP + ["--hp", "sgd.lr"], 2, ["--hp expects NAME=VALUE"], False),
    ("compare-hp-no-name", CMP + ["--hp", "=0.1"], 2, ["--hp expects NAME=VALUE"], False),
    ("compare-hp-no-optimizer", CMP + ["--hp", "lr=0.1"], 2,
     ["--hp needs OPTIMIZER.NAME=VALUE"], False),
    ("compare-hp-unknown-name", CMP + ["--hp", "sgd.lrr=1"], 2,
     ["unknown hyper-parameter 'lrr'", "did you mean 'lr'"], False),
    ("compare-hp-range", CMP + ["--hp", "sgd.lr=-1"], 2, ["lr must be in", "inf)", "-1"], False),
    ("compare-hp-nan", CMP + ["--hp", "sgd.lr=nan"], 2, ["lr must be in"], False),
    ("compare-hp-text", CMP + ["--hp", "sgd.lr=fast"], 2,
     ["lr must be a number in", "inf)", "'fast'"], False),
    ("compare-hp-int-truncation", CMP[:4] + ["kfac"] + CMP[5:] + ["--hp", "kfac.factor_every=2.5"],
     2, ["factor_every must be an integer in [1, inf)", "'2.5'"], False),
    ("compare-hp-bool", CMP + ["--hp", "sgd.nesterov=maybe"], 2,
     ["nesterov must be true or false", "'maybe'"], False),
    ("compare-hp-tuple-text", CMP[:4] + ["adam"] + CMP[5:] + ["--hp", "adam.betas=abc"], 2,
     ["betas must be 2 comma-separated numbers", "'abc'"], False),
    ("compare-hp-tuple-length", CMP[:4] + ["adam"] + CMP[5:] + ["--hp", "adam.betas=0.9"], 2,
     ["betas must have 2 entries"], False),
    ("compare-hp-choice", CMP[:4] + ["kfac"] + CMP[5:] + ["--hp", "kfac.fisher_type=mcc"], 2,
     ["fisher_type must be one of", "did you mean 'mc'"], False),
    ("compare-hp-not-compared", CMP + ["--hp", "adam.lr=0.1"], 2,
     ["hparams given for ['adam']", "not compared"], False),
    ("compare-hp-unknown-optimizer", CMP + ["--hp", "adamm.lr=0.1"], 2,
     ["hparams given for ['adamm']"], False),
    # ablate's own options
    ("ablate-optimizer-missing", ["ablate", "--problem", "quadratic", "--hparam", "lr"], 2,
     [USAGE, "required: --optimizer"], False),
    ("ablate-optimizer-unknown", ABL[:4] + ["sgdd"] + ABL[5:], 2,
     ["unknown optimizer 'sgdd'"], False),
    ("ablate-nothing-to-vary", ABL[:5] + ABL[7:-2], 2, ["nothing to vary"], False),
    ("ablate-values-without-hparam", ABL[:5] + ABL[7:], 2, ["--values goes with --hparam"],
     False),
    ("ablate-vary-no-equals", ABLV + ["--vary", "damping"], 2, ["--vary expects NAME=V1,V2"],
     False),
    ("ablate-vary-empty", ABLV + ["--vary", "dampening="], 2, ["--vary dampening= has no values"],
     False),
    ("ablate-vary-twice", ABLV + ["--hparam", "momentum", "--values", "0.5"], 2,
     ["momentum is given with both --hparam and --vary"], False),
    ("ablate-vary-duplicate-level", ABL[:5] + ["--vary", "momentum=0.5,0.5"] + ABL[7:-2], 2,
     ["a level is given twice"], False),
    ("ablate-vary-tuple-text", ABL[:4] + ["adam", "--vary", "betas=(0.9,x)"] + ABL[7:-2], 2,
     ["betas must be 2 comma-separated numbers"], False),
    ("ablate-retune-unknown", ABLV + ["--retune", "lrr"], 2,
     ["unknown hyper-parameter 'lrr'", "did you mean 'lr'"], False),
    ("ablate-retune-no-space", ABLV + ["--retune", "dampening"], 2,
     ["sgd.dampening declares no search space", "tunable: lr"], False),
    ("ablate-retune-varied", ABLV + ["--retune", "momentum"], 2,
     ["sgd.momentum is varied; it cannot also be re-tuned"], False),
    ("ablate-problems-one-unknown", ["ablate", "--problems", "quadratic,nope"] + ABLV[3:], 2,
     ["unknown problem 'nope'"], False),
    ("ablate-hparam-unknown", ABL[:6] + ["nope"] + ABL[7:], 2,
     ["unknown hyper-parameter 'nope'", "allowed: lr"], False),
    ("ablate-problem-unknown", ["ablate", "--problem", "nope"] + ABL[3:], 2,
     ["unknown problem 'nope'"], False),
    ("ablate-values-text", ABL + ["--values", "0.1,fast"], 2,
     ["lr must be a number in", "inf)", "'fast'"], False),
    ("ablate-values-range", ABL + ["--values", "0.1,-1"], 2, ["lr must be in", "got -1"], False),
    ("ablate-values-gap", ABL + ["--values", "0.1,,0.2"], 2, ["lr must be a number", "''"], False),
    ("ablate-values-empty", ABL + ["--values", ""], 2, ["--values is empty"], False),
    ("ablate-values-int-truncation",
     ABL[:4] + ["kfac", "--hparam", "factor_every"] + ABL[7:] + ["--values", "1,2.5"], 2,
     ["factor_every must be an integer", "'2.5'"], False),
    ("ablate-values-no-default", ABL[:6] + ["weight_decay"] + ABL[7:-2], 2,
     ["no values to ablate for sgd.weight_decay"], False),
    ("ablate-hp-no-equals", ABL + ["--hp", "momentum"], 2, ["--hp expects NAME=VALUE"], False),
    ("ablate-hp-range", ABL + ["--hp", "momentum=2"], 2, ["momentum must be in"], False),
    ("ablate-hp-unknown", ABL + ["--hp", "momentm=0.5"], 2,
     ["unknown hyper-parameter 'momentm'", "did you mean 'momentum'"], False),
    ("ablate-hp-other-optimizer", ABL + ["--hp", "adam.lr=0.1"], 2,
     ["ablate fixes hyper-parameters of sgd only"], False),
    ("ablate-hp-is-the-ablated", ABL + ["--hp", "lr=0.1"], 2,
     ["sgd.lr is varied; do not also fix it"], False),
    # report's options
    ("report-store-missing", ["report", "--store", "{store}", "--out", "{rep}"], 2,
     ["does not exist"], False),
    ("report-store-garbage", ["report", "--store", "{garbage}", "--out", "{rep}"], 2,
     ["not an SQLite database"], False),
    ("report-store-foreign", ["report", "--store", "{foreign}", "--out", "{rep}"], 2,
     ["not a curvlab results store"], False),
    ("report-store-empty", ["report", "--store", "{empty}", "--out", "{rep}"], 2,
     ["holds no comparison"], False),
    ("report-comparison-unknown", REP + ["--comparison", "nope"], 2,
     ["unknown comparison 'nope'", "known:"], False),
    ("report-out-under-file", ["report", "--store", "{good}", "--out", "{file}/rep"], 2,
     ["cannot create report folder"], False),
    ("report-profile-value", REP + ["--profile=1"], 2, [USAGE, "ignored explicit argument"], False),
    ("report-measure-without-profile", REP + ["--measure", "steps"], 2,
     ["--measure only apply with --profile or --score"], False),
    ("report-taus-without-profile", REP + ["--taus", "1,2"], 2, ["--taus only apply"], False),
    ("report-taus-with-score", REP + ["--score", "--taus", "1,2"], 2,
     ["--taus only applies with --profile"], False),
    ("report-comparisons-without-profile", REP + ["--comparisons", "x"], 2,
     ["--comparisons only apply"], False),
    ("report-comparison-with-profile", PROF + ["--comparison", "x"], 2,
     ["with --profile/--score use --comparisons"], False),
    ("report-format", REP + ["--format", "xlsx"], 2, ["--format must be among markdown, parquet"],
     False),
    ("report-format-empty", REP + ["--format", ","], 2, ["--format must be among"], False),
    ("report-format-with-profile", PROF + ["--format", "parquet"], 2,
     ["--format applies to the report of one comparison"], False),
    ("report-score-value", REP + ["--score=1"], 2, [USAGE, "ignored explicit argument"], False),
    ("report-r-max-without-score", REP + ["--r-max", "4"], 2, ["--r-max only applies with --score"],
     False),
    ("report-r-max-small", REP + ["--score", "--r-max", "1"], 2, ["--r-max must be a finite number > 1"],
     False),
    ("report-r-max-text", REP + ["--score", "--r-max", "big"], 2, ["--r-max must be a number > 1"],
     False),
    ("report-score-measure", REP + ["--score", "--measure", "flops"], 2,
     ["measure must be one of"], False),
    ("report-measure", PROF + ["--measure", "flops"], 2, ["measure must be one of", "'flops'"], False),
    ("report-comparisons-unknown", PROF + ["--comparisons", "nope"], 2,
     ["unknown comparison 'nope'"], False),
    ("report-comparisons-empty", PROF + ["--comparisons", ","], 2, ["--comparisons is empty"], False),
    ("report-taus-small", PROF + ["--taus", "0.5"], 2, ["--taus values must be >= 1"], False),
    ("report-taus-nan", PROF + ["--taus", "1,nan"], 2, ["--taus values must be >= 1"], False),
    ("report-taus-text", PROF + ["--taus", "1,two"], 2, ["--taus expects comma-separated numbers"],
     False),
    ("report-unknown-option", REP + ["--bogus"], 2, [USAGE, "unrecognized arguments: --bogus"],
     False),
    # data and merge
    ("data-unknown-option", ["data", "--bogus"], 2, [USAGE, "unrecognized arguments"], False),
    ("data-debug-value", ["data", "--debug=1"], 2, [USAGE, "ignored explicit argument"], False),
    ("merge-debug-value", ["merge", "{good}", "--out", "{store}", "--debug=1"], 2,
     [USAGE, "ignored explicit argument"], False),
    ("data-data-dir-missing", ["data", "--data-dir"], 2, [USAGE, "expected one argument"], False),
    ("merge-no-input", ["merge", "--out", "{store}"], 2, [USAGE, "required: STORE"], False),
    ("merge-no-out", ["merge", "{good}"], 2, [USAGE, "required: --out"], False),
    ("merge-input-missing", ["merge", "{rep}/none.sqlite", "--out", "{store}"], 2,
     ["does not exist"], False),
    ("merge-input-garbage", ["merge", "{garbage}", "--out", "{store}"], 2,
     ["not an SQLite database"], False),
    ("merge-out-foreign", ["merge", "{good}", "--out", "{foreign}"], 2,
     ["not a curvlab results store"], False),
    ("merge-out-is-input", ["merge", "{good}", "--out", "{good}"], 2,
     ["is also the output"], False),
    ("merge-on-conflict", ["merge", "{good}", "--out", "{store}", "--on-conflict", "last"], 2,
     ["on_conflict must be one of", "'last'"], False),
]
for command, base in (("compare", CMP), ("ablate", ABL)):
    ROWS += [(f"{command}-{sid}", base + extra, 2, words, False) for sid, extra, words in SETTINGS]


@pytest.fixture(scope="module")
def files(tmp_path_factory):
    d = tmp_path_factory.mktemp("cli-input")
    (d / "file").write_text("not a folder")
    (d / "garbage.sqlite").write_text("key,loss\nabc,0.5\n" * 100)
    with sqlite3.connect(d / "foreign.sqlite") as conn:
        conn.execute("CREATE TABLE runs (id INTEGER PRIMARY KEY, athlete TEXT)")
    Store(d / "empty.sqlite").close()
    compare("quadratic", ["sgd"], steps=2, eval_every=1, executor="serial",
            store=str(d / "good.sqlite")).store.close()
    return {"file": d / "file", "garbage": d / "garbage.sqlite", "foreign": d / "foreign.sqlite",
            "empty": d / "empty.sqlite", "good": d / "good.sqlite"}


@pytest.mark.parametrize("argv, code, words, creates_store", [r[1:] for r in ROWS],
                         ids=[r[0] for r in ROWS])
def test_bad_input(argv, code, words, creates_store, files, tmp_path, capsys):
    where = {**files, "store": tmp_path / "s.sqlite", "rep": tmp_path / "rep"}
    args = [a.format(**where) for a in argv]
    try:
        got = main(args)
    except SystemExit as stop:  # argparse's usage errors
        got = stop.code
    err = capsys.readouterr().err
    assert got == code, err
    assert "Traceback" not in err, err
    for word in words:
        assert word in err, (word, err)
    assert err.startswith("curvlab: error:") and len(err.strip().splitlines()) == 1, err
    assert (tmp_path / "s.sqlite").exists() == creates_store


SUBCOMMANDS = ("list", "info", "data", "compare", "ablate", "report", "merge")


@pytest.mark.parametrize("command", SUBCOMMANDS)
def test_the_table_covers_every_option(command, capsys):
    """Each option in a sub-command's ``--help`` appears in at least one row of that sub-command."""
    with pytest.raises(SystemExit):
        main([command, "--help"])
    options = capsys.readouterr().out.split("\nexamples:")[0]
    flags = set(re.findall(r"(?<![\w-])(--[a-z][a-z-]*)", options))
    flags -= {"--help"}
    flags = {f for f in flags if not (f.startswith("--no-") and f"--{f[5:]}" in flags)}
    used = {a.split("=")[0] for _, argv, _, _, _ in ROWS if argv[:1] == [command] for a in argv}
    assert flags, command
    assert not flags - used, f"{command}: no bad-input row for {sorted(flags - used)}"
