"""benchmarks/recipes.py end to end on tiny data: the table and each run's result.json, a second call that
trains nothing, a run continued from its last.pth, the course layout of --data, and the refusals."""
import importlib.util
import json
import shlex
from pathlib import Path

import pytest

from datasets.p1 import csv_accuracy
import p1_train
from tests.conftest import REPO, write_p1_folder
from config import recipes
from utils.errors import run_cli


@pytest.fixture
def bench(monkeypatch):
    """The benchmark as a module (benchmarks/ is not a package), with vgg13's strong recipe cut to one
    part: --tta none, cheap (and no candidate parts)."""
    spec = importlib.util.spec_from_file_location("bench_recipes", REPO / "benchmarks" / "recipes.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    monkeypatch.setitem(recipes.PARTS["p1"], "vgg13", {"tta": ("tta",)})
    monkeypatch.setitem(recipes.CANDIDATES, "p1", {})
    return module


def tiny_digits(root, *, val_fraction, test_fraction):
    """Stands in for write_digits: 2 classes, 4 training (one step of --batch-size 8), 2 selection and 2
    held-out images each."""
    return tuple(write_p1_folder(root / name, range(2), n, seed=seed)
                 for name, n, seed in (("train_50", 4, 0), ("val_50", 2, 1), ("test_50", 2, 2)))


def call(bench, *argv):
    return bench.main(bench.get_args_parser().parse_args([str(a) for a in argv]))


def run_dir(work, variant, problem="p1", model="vgg13", seed=0):
    return work / "runs" / problem / model / variant.replace(" ", "-") / f"seed{seed}"


def result_of(work, variant):
    return json.loads((run_dir(work, variant) / "result.json").read_text())


def test_ablate_writes_one_table_and_a_later_call_continues_run_by_run(bench, monkeypatch, tmp_path, capsys):
    monkeypatch.setattr(bench, "write_digits", tiny_digits)
    work = tmp_path / "work"
    argv = ["--problem", "p1", "--ablate", "--epochs", 1, "--seeds", 0, "--batch-size", 8, "--work-dir", work]
    first = call(bench, *argv)
    rows = first["rows"]
    assert [r["variant"] for r in rows] == ["reference", "strong", "strong without tta"]
    assert result_of(work, "strong without tta")["flags"][4:6] == ["--tta", "none"]  # after --recipe strong

    head, table = (work / "recipes.md").read_text().split("\n\n")
    assert head.startswith("`python3 benchmarks/recipes.py --epochs 1 --batch-size 8 --seeds 0 --ablate --work-dir ")
    assert "p1: 1 epochs, batch 8" in head and "held-out accuracy" in head
    lines = table.splitlines()
    assert lines[0] == "| model | variant | seed 0 | mean | difference |"
    assert len(lines) == 2 + len(rows)
    for row, line in zip(rows, lines[2:]):
        figure = result_of(work, row["variant"])["graded"]
        assert row["figures"] == [figure]
        assert line.startswith(f"| vgg13 | {row['variant']} | {figure:.4f} | {figure:.4f} | ")
    reference, strong, ablated = rows
    assert reference["difference"] is None and lines[2].endswith("|  |")
    assert strong["difference"] == pytest.approx(strong["mean"] - reference["mean"])
    assert lines[3].endswith(f"{strong['difference']:+.4f} vs reference |")
    assert ablated["difference"] == pytest.approx(ablated["mean"] - strong["mean"])
    assert lines[4].endswith(f"{ablated['difference']:+.4f} vs strong |")

    def no_training(args):
        raise AssertionError("a run with a result.json was trained again")

    real_main = p1_train.main
    capsys.readouterr()
    monkeypatch.setattr(p1_train, "main", no_training)
    assert call(bench, *argv)["rows"] == rows
    assert capsys.readouterr().out.count("(done before)") == 3

    # A run killed after its training but before its result: continued from its last.pth, and only that one.
    (run_dir(work, "strong without tta") / "result.json").unlink()
    continued = []

    def resume_only(args):
        continued.append(dict(vars(args)))  # before the script fills in the checkpoint's flags
        return real_main(args)

    monkeypatch.setattr(p1_train, "main", resume_only)
    assert call(bench, *argv)["rows"] == rows
    [args] = continued
    given = {key: value for key, value in args.items() if value not in (None, False)}
    assert given == {"resume": run_dir(work, "strong without tta") / "last.pth", "device": "cpu"}
    assert result_of(work, "strong without tta")["resumed"] is True


def test_a_run_trained_otherwise_is_refused_not_reused(bench, monkeypatch, tmp_path, capsys):
    monkeypatch.setattr(bench, "write_digits", tiny_digits)
    work = tmp_path / "work"
    folder = run_dir(work, "reference")
    folder.mkdir(parents=True)
    flags = ["--model", "vgg13", "--recipe", "reference", "--seed", "0", "--train-dir", "x", "--val-dir", "y",
             "--output-dir", str(folder), "--save-epochs", "--epochs", "1", "--no-pretrained"]
    (folder / "result.json").write_text(json.dumps({"data": "digits", "flags": flags, "graded": 0.5}))
    code = run_cli(bench.main, bench.get_args_parser(),
                   ["--problem", "p1", "--epochs", "2", "--seeds", "0", "--work-dir", str(work)])
    err = capsys.readouterr().err.strip().splitlines()
    assert code == 2 and len(err) == 1
    assert str(folder) in err[0] and "--epochs 1" in err[0] and "--epochs 2" in err[0]


def test_data_trains_on_the_course_training_folder_and_grades_validation(bench, tmp_path):
    root = tmp_path / "hw1_data"
    train = write_p1_folder(root / "p1_data" / "train_50", range(2), 4, seed=0)
    val = write_p1_folder(root / "p1_data" / "val_50", range(2), 3, seed=1)
    work = tmp_path / "work"
    out = call(bench, "--data", root, "--problem", "p1", "--models", "vgg13", "--epochs", 1, "--device", "cpu",
               "--batch-size", 8, "--seeds", 0, "--work-dir", work)
    assert [r["variant"] for r in out["rows"]] == ["reference", "strong"]
    for row in out["rows"]:
        folder = run_dir(work, row["variant"])
        used = json.loads((folder / "args.json").read_text())
        assert (Path(used["train_dir"]), Path(used["val_dir"]), used["device"]) == (train, val, "cpu")
        result = json.loads((folder / "result.json").read_text())
        assert (result["data"], result["graded_dir"]) == ("course data", str(val))
        assert result["graded"] == csv_accuracy(folder / "graded.csv")[0] == row["figures"][0]
        assert csv_accuracy(folder / "graded.csv")[1] == 6  # every validation image
        assert "--no-pretrained" not in result["flags"] and "--tile-size" not in result["flags"]
    head = (work / "recipes.md").read_text().splitlines()[0]
    assert f"--data {root}" in head and f"validation accuracy ({val})" in head


def test_data_defaults_each_recipes_own_epochs_weights_and_both_problems(bench, tmp_path):
    root = tmp_path / "hw1_data"
    for sub in ("p1_data/train_50", "p1_data/val_50", "p2_data/train", "p2_data/validation"):
        (root / sub).mkdir(parents=True)
    args = bench.get_args_parser().parse_args(["--data", str(root), "--problem", "all", "--work-dir", str(tmp_path),
                                               "--pretrained-file", "beit=w/beit.pth"])
    plan = bench.check_args(args)
    assert plan == {"p1": ["vgg13", "beit"], "p2": ["fcn32s", "deeplabv3"]} and args.device == "auto"
    data = {problem: bench.prepare_data(problem, tmp_path, args) for problem in plan}
    assert (data["p2"].train, data["p2"].select, data["p2"].graded) == (
        root / "p2_data/train", root / "p2_data/validation", root / "p2_data/validation")
    for problem, models in plan.items():
        for run in bench.plan_runs(problem, models, args):
            flags = shlex.join(bench.training_flags(run, data[problem], tmp_path / "run", args))
            assert "--epochs" not in flags and "--no-pretrained" not in flags and "--tile-size" not in flags
            assert ("--pretrained-file" in flags) == (run.model == "beit")
    assert str(Path("w/beit.pth").absolute()) in bench.training_flags(
        bench.Run("p1", "beit", "strong", 0), data["p1"], tmp_path / "run", args)


def test_proxy_defaults_are_short_random_weight_runs_on_the_cpu(bench, tmp_path):
    args = bench.get_args_parser().parse_args(["--problem", "p2"])
    assert bench.check_args(args) == {"p2": ["fcn32s", "deeplabv3"]}
    assert (args.epochs, args.device, args.tile_size, tuple(args.tiles)) == (6, "cpu", 128, (48, 16, 16))
    data = bench.Data("tiles", tmp_path / "a", tmp_path / "b", tmp_path / "c", "held-out mIoU")
    flags = shlex.join(bench.training_flags(bench.Run("p2", "fcn32s", "strong", 1), data, tmp_path / "run", args))
    assert "--epochs 6" in flags and "--no-pretrained" in flags and "--tile-size 128" in flags
    args = bench.get_args_parser().parse_args([])
    assert bench.check_args(args) == {"p1": ["vgg13"]} and (args.epochs, args.device) == (10, "cpu")


@pytest.mark.parametrize("argv, needle", [
    (["--data", "{tmp}", "--problem", "p1"], "--data needs --work-dir"),
    (["--problem", "all"], "add --data"),
    (["--pretrained-file", "beit=w.pth"], "--pretrained-file goes with --data"),
    (["--data", "{tmp}", "--work-dir", "{tmp}/w"], "no p1_data/train_50"),
    (["--data", "{tmp}", "--work-dir", "{tmp}/w", "--tiles", "4", "4", "4"], "--tiles"),
    (["--problem", "p1", "--models", "fcn32s"], "--models fcn32s"),
    (["--seeds", "1", "1"], "seed 1 given twice"),
])
def test_bad_input_is_one_line(bench, tmp_path, capsys, argv, needle):
    code = run_cli(bench.main, bench.get_args_parser(), [a.replace("{tmp}", str(tmp_path)) for a in argv])
    err = capsys.readouterr().err.strip().splitlines()
    assert code == 2 and len(err) == 1 and needle in err[0], err
    assert not (tmp_path / "w").exists()


def test_ablation_and_candidate_rows_on_fewer_seeds_compare_with_strong_on_those_seeds(bench, monkeypatch):
    monkeypatch.setitem(recipes.CANDIDATES, "p1", {"vgg13": {"cutmix": ["--cutmix", "0.5"]}})
    args = bench.get_args_parser().parse_args(["--ablate", "--seeds", "0", "1", "--ablate-seeds", "1"])
    runs = bench.plan_runs("p1", ["vgg13"], args)
    assert [(r.variant, r.seed) for r in runs] == [("reference", 0), ("reference", 1), ("strong", 0), ("strong", 1),
                                                   ("strong without tta", 0), ("strong with cutmix", 0)]
    graded = {("reference", 0): 0.5, ("reference", 1): 0.25, ("strong", 0): 0.75, ("strong", 1): 0.5,
              ("strong without tta", 0): 0.5, ("strong with cutmix", 0): 1.0}
    results = {r: {"graded": graded[(r.variant, r.seed)]} for r in runs}
    rows = {r["variant"]: r for r in bench.table_rows(runs, results)}
    assert rows["strong"]["difference"] == 0.25  # mean 0.625 against 0.375
    assert rows["strong without tta"]["difference"] == -0.25  # against strong's seed 0 alone
    assert rows["strong with cutmix"]["difference"] == 0.25
    assert "| vgg13 | strong with cutmix | 1.0000 |  | 1.0000 | +0.2500 vs strong |" in bench.markdown(rows.values(), [0, 1])


def test_vary_trains_a_run_per_value_draws_them_and_a_later_call_trains_nothing(bench, monkeypatch, tmp_path,
                                                                                capsys):
    monkeypatch.setattr(bench, "write_digits", tiny_digits)
    work = tmp_path / "work"
    argv = ["--problem", "p1", "--vary", "lr=0.01,0.05", "--epochs", 1, "--seeds", 0, "--batch-size", 8,
            "--work-dir", work]
    first = call(bench, *argv)
    rows = first["rows"]
    assert [r["variant"] for r in rows] == ["strong lr=0.01", "strong lr=0.05"]
    for row, lr in zip(rows, (0.01, 0.05)):
        folder = run_dir(work, row["variant"])
        assert folder.name == "seed0" and folder.parent.name == f"strong-lr={lr}"
        used = json.loads((folder / "args.json").read_text())
        assert (used["recipe"], used["lr"], used["epochs"]) == ("strong", lr, 1)
        assert row["figures"] == [result_of(work, row["variant"])["graded"]]
    low, high = rows
    assert low["difference"] is None and high["difference"] == pytest.approx(high["mean"] - low["mean"])

    head, table, picture = (work / "sweep.md").read_text().strip().split("\n\n")
    assert head.startswith("`python3 benchmarks/recipes.py --epochs 1 --batch-size 8 --seeds 0 --vary lr=0.01,0.05 ")
    assert "--vary lr on the strong recipe (its own: vgg13 0.05), each difference from lr=0.01" in head
    lines = table.splitlines()
    assert lines[0] == "| model | variant | seed 0 | mean | difference |" and len(lines) == 4
    assert lines[2].startswith("| vgg13 | strong lr=0.01 | ") and lines[2].endswith("|  |")
    assert lines[3].endswith(f"| {high['difference']:+.4f} vs strong lr=0.01 |")
    assert picture.endswith("(sweep.png)") and first["figures"] == {"p1": str(work / "sweep.png")}
    assert (work / "sweep.png").stat().st_size > 0

    def no_training(args):
        raise AssertionError("a run with a result.json was trained again")

    capsys.readouterr()
    monkeypatch.setattr(p1_train, "main", no_training)
    assert call(bench, *argv)["rows"] == rows
    assert capsys.readouterr().out.count("(done before)") == 2


def test_vary_on_the_course_layout_writes_each_switch_value_back_as_the_script_parses_it(bench, tmp_path):
    root = tmp_path / "hw1_data"
    train = write_p1_folder(root / "p1_data" / "train_50", range(2), 4, seed=0)
    write_p1_folder(root / "p1_data" / "val_50", range(2), 2, seed=1)
    work, report = tmp_path / "work", tmp_path / "out" / "decay.md"
    out = call(bench, "--data", root, "--models", "vgg13", "--vary", "norm-bias-decay=off,on", "--recipe", "reference",
               "--epochs", 1, "--device", "cpu", "--batch-size", 8, "--seeds", 0, "--work-dir", work,
               "--markdown", report)
    assert [r["variant"] for r in out["rows"]] == ["reference norm_bias_decay=off", "reference norm_bias_decay=on"]
    for row, decay in zip(out["rows"], (False, True)):
        folder = run_dir(work, row["variant"])
        used = json.loads((folder / "args.json").read_text())
        assert (used["recipe"], used["norm_bias_decay"], Path(used["train_dir"])) == ("reference", decay, train)
        assert ("--norm-bias-decay" if decay else "--no-norm-bias-decay") in result_of(work, row["variant"])["flags"]
    assert "(its own: vgg13 on)" in report.read_text() and (tmp_path / "out" / "decay.png").is_file()


def test_vary_values_are_parsed_by_the_flags_type_and_written_back_by_words(bench):
    args = bench.get_args_parser().parse_args(["--problem", "p2", "--models", "fcn32s", "deeplabv3",
                                               "--vary", "tta-scales=1:0.75,1,1.25", "--seeds", "0", "1"])
    plan = bench.check_args(args)
    assert args.vary.values == ([1.0], [0.75, 1.0, 1.25]) and args.recipe == "strong"
    runs = bench.plan_runs("p2", plan["p2"], args)
    assert [(r.model, r.variant, r.seed) for r in runs][:3] == [
        ("fcn32s", "strong tta_scales=1", 0), ("fcn32s", "strong tta_scales=1", 1),
        ("fcn32s", "strong tta_scales=0.75,1,1.25", 0)]
    assert len(runs) == 8 and runs[2].extra == ("--tta-scales", "0.75,1.0,1.25")
    assert bench.figure_paths(Path("out/lr.md"), plan) == {"p2": Path("out/lr.png")}
    assert bench.figure_paths(Path("out/lr.md"), {"p1": [], "p2": []}) == {"p1": Path("out/lr-p1.png"),
                                                                           "p2": Path("out/lr-p2.png")}
    args = bench.get_args_parser().parse_args(["--vary", "rand-augment=0,9", "--models", "beit", "--seeds", "0"])
    bench.check_args(args)  # an option of beit strong's preset
    assert [r.extra for r in bench.plan_runs("p1", ["beit"], args)] == [("--rand-augment", "0.0"),
                                                                       ("--rand-augment", "9.0")]
    args = bench.get_args_parser().parse_args(["--vary", "nesterov=True,off", "--seeds", "0"])
    bench.check_args(args)
    assert [(r.variant, r.extra) for r in bench.plan_runs("p1", ["vgg13"], args)] == [
        ("strong nesterov=on", ("--nesterov",)), ("strong nesterov=off", ("--no-nesterov",))]


@pytest.mark.parametrize("argv, needle", [
    (["--vary", "lr"], "--vary lr: expected FLAG=V1,V2,..."),
    (["--vary", "nonsense=1,2"], "--vary nonsense=1,2: nonsense is no training flag"),
    (["--vary", "loss=ce,focal"], "--vary loss=ce,focal: --loss is a flag of p2_train.py, not of p1_train.py"),
    (["--vary", "layer-decay=0.7,0.8"], "--layer-decay changes only beit, not vgg13"),
    (["--vary", "momentum=0.8,0.9", "--models", "beit"], "does not act on beit's strong recipe, which has --opt adamw"),
    (["--vary", "rand-augment=5,9", "--models", "vgg13"],
     "does not act on vgg13's strong recipe, which has --augment crop-flip"),
    (["--vary", "seed=0,1"], "use its --seeds"),
    (["--vary", "eval-batch-size=8,16"], "--eval-batch-size changes no number of a run"),
    (["--vary", "pretrained=on,off"], "add --data"),
    (["--vary", "freeze-bn=on,off", "--problem", "p2", "--models", "deeplabv3"],
     "--freeze-bn acts only on pretrained ones (add --data)"),
    (["--vary", "epochs=1,2", "--epochs", "1"], "--epochs is given too"),
    (["--vary", "lr="], "--vary lr=: no values"),
    (["--vary", "lr=0.1,,0.2"], "an empty value"),
    (["--vary", "lr=0.1"], "--vary lr=0.1: one value"),
    (["--vary", "lr=0.1,abc"], "--vary lr=0.1,abc: abc is not a number"),
    (["--vary", "batch-size=8,x"], "x is not an integer"),
    (["--vary", "lr=0.1,nan"], "nan is not a finite number"),
    (["--vary", "lr=0.1,-1"], "--vary lr=0.1,-1: --lr must be positive (got -1.0)"),
    (["--vary", "ema=0.5,1"], "--vary ema=0.5,1: --ema 1.0: a decay in [0, 1)"),
    (["--vary", "tta=flip,sideways"], "--vary tta=flip,sideways: --tta sideways: choose from"),
    (["--vary", "nesterov=on,maybe"], "maybe: --nesterov is a switch; give on/off or true/false"),
    (["--vary", "lr=0.1,1e-1"], "--vary lr=0.1,1e-1: 1e-1 is the value of 0.1 again"),
    (["--vary", "nesterov=on,true"], "true is the value of on again"),
    (["--vary", "lr=0.1,0.2", "--ablate"], "--vary and --ablate"),
    (["--recipe", "reference"], "--recipe reference chooses the recipe of a sweep"),
])
def test_bad_vary_is_one_line(bench, tmp_path, capsys, argv, needle):
    code = run_cli(bench.main, bench.get_args_parser(), argv + ["--work-dir", str(tmp_path / "w")])
    err = capsys.readouterr().err.strip().splitlines()
    assert code == 2 and len(err) == 1 and needle in err[0], err
    assert not (tmp_path / "w").exists()
