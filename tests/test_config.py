"""A run's configuration: every flag declared once, the recipes checked against the declarations,
one order of resolution, and the commands that rerun a run, parsed back by the scripts' own parsers."""
import json
import re
import shlex

import pytest

import make_report
import p1_train
import p2_train
from config import flags
from config.recipes import RECIPES
from models import list_models, option_names
from tests.conftest import assert_one_line_error, run_main
from training.setup import resolve
from utils.args import REPO, float_list
from utils.errors import UserError

SCRIPTS = {"p1": p1_train, "p2": p2_train}


def test_every_recipe_sets_declared_flags_of_its_problem_to_valid_values():
    for problem, models in RECIPES.items():
        assert sorted(models) == sorted(list_models(problem))
        for model, recipes in models.items():
            for name, recipe in recipes.items():
                for key, value in recipe.items():
                    flag = flags.BY_NAME[key]  # declared
                    assert problem in flag.problems and flag.default == flags.RECIPE, (model, name, key)
                    assert flag.models is None or model in flag.models, (model, name, key)
                flags.check(flags.defaults(problem, model, name), problem)  # every value in its range


def test_each_model_option_is_declared_for_the_models_whose_builder_takes_it():
    for name in set(option_names()):
        declared = flags.BY_NAME[name].models
        taking = {m for m in list_models() if name in option_names(m)}
        assert declared is not None and set(declared) == taking, name


def test_a_flag_left_out_takes_the_typed_then_the_earlier_run_then_the_recipe(p1_data, tmp_path):
    train, val = p1_data
    parse = p1_train.get_args_parser().parse_args
    typed = parse(["--train-dir", str(train), "--val-dir", str(val), "--model", "vgg13", "--recipe", "strong"])
    assert sorted(vars(typed)) == ["model", "recipe", "train_dir", "val_dir"]  # what was typed, no default
    values, resume = resolve(typed, "p1")
    assert resume is None and values.lr == RECIPES["p1"]["vgg13"]["strong"]["lr"] and values.nesterov is True
    assert values.cutmix == flags.BY_NAME["cutmix"].off and values.eval_batch_size == 256
    assert values.output_dir.name == "p1_vgg13" and values.save_epochs == [1, 150, 300]
    (tmp_path / "args.json").write_text(json.dumps(flags.to_json({**vars(values), "lr": 0.5, "epochs": 10})))
    rerun, _ = resolve(parse(["--config", str(tmp_path), "--epochs", "4"]), "p1")
    assert (rerun.lr, rerun.epochs, rerun.recipe, rerun.nesterov) == (0.5, 4, "strong", True)
    assert rerun.save_epochs == [1, 2, 4]  # a new length has snapshots of its own


def test_a_config_of_the_other_problem_or_not_a_run_is_refused_in_one_line(p2_run, tmp_path):
    proc = run_main(p1_train, "--config", p2_run / "args.json")
    assert_one_line_error(proc, f"--config {p2_run / 'args.json'}: the flags of a lraspp run, not of a p1 model")
    (tmp_path / "args.json").write_text("[1, 2")
    assert_one_line_error(run_main(p1_train, "--config", tmp_path), "--config", "not a run's args.json")
    assert_one_line_error(run_main(p1_train, "--config", tmp_path / "nope.json"), "nope.json: no such file")
    proc = run_main(p1_train, "--config", tmp_path / "args.json", "--resume", tmp_path / "last.pth")
    assert_one_line_error(proc, "--config and --resume")
    # An edited args.json: a value of another type, or none, where a flag takes one; a key no flag has.
    for edit, said in (({"lr": "fast"}, '--lr: "fast" is not a number'), ({"lr": None}, "--lr: null is not a number"),
                       ({"nesterov": 1}, "--nesterov: 1 is not true or false"),
                       ({"save_epochs": [1, 2.5]}, "--save-epochs: [1, 2.5] is not a list of integers"),
                       ({"warmpu": 0.1}, "warmpu is no flag of p1_train.py")):
        (tmp_path / "args.json").write_text(json.dumps({"model": "vgg13", **edit}))
        assert_one_line_error(run_main(p1_train, "--config", tmp_path / "args.json"), said)


def test_combinations_that_cannot_work_are_refused_in_one_line():
    assert_one_line_error(run_main(p1_train, "--opt", "sgd", "--momentum", "0", "--nesterov"),
                          "--nesterov: Nesterov momentum needs a --momentum above 0 (got 0.0)")
    # Typed for a run it does not act on, a flag would be recorded and change nothing.
    assert_one_line_error(run_main(p1_train, "--opt", "adamw", "--momentum", "0.5"),
                          "--momentum 0.5: acts only with --opt sgd, and this run has --opt adamw")
    assert_one_line_error(run_main(p1_train, "--drop-path", "0.1"), "--drop-path 0.1: a flag of beit, not of --model vgg13")
    assert_one_line_error(run_main(p1_train, "--erasing-mode", "pixel"),
                          "--erasing-mode pixel: acts only with --random-erasing positive, and this run has "
                          "--random-erasing 0.0")
    assert_one_line_error(run_main(p2_train, "--model", "deeplabv3", "--freeze-bn", "--no-pretrained"),
                          "--freeze-bn: acts only with --pretrained, and this run has --no-pretrained")


@pytest.mark.parametrize("problem, model", [(p, m) for p in RECIPES for m in RECIPES[p]])
@pytest.mark.parametrize("recipe", ["reference", "strong"])
def test_both_rerun_commands_parse_back_to_the_same_configuration(problem, model, recipe, p1_data, p2_data,
                                                                    tmp_path):
    train, val = p1_data if problem == "p1" else p2_data
    script = SCRIPTS[problem]
    typed = ["--model", model, "--recipe", recipe, "--train-dir", str(train), "--val-dir", str(val), "--epochs", "3",
             "--lr", "0.125", "--no-pretrained", "--tta", "flip", "--save-epochs", "2", "3", "--output-dir",
             str(tmp_path / "run")]
    if problem == "p2":
        typed += ["--tile-size", "64", "--scale-range", "0.5,1.25", "--tta-scales", "0.5,1"]
    values, _ = resolve(script.get_args_parser().parse_args(typed), problem)
    (tmp_path / "run").mkdir()
    (tmp_path / "run" / "args.json").write_text(json.dumps(flags.to_json(vars(values))))
    out = tmp_path / "rerun"
    for config in (tmp_path / "run" / "args.json", None):
        words = shlex.split(" ".join(flags.command(problem, vars(values), output_dir=out, config=config)))
        assert words[:2] == ["python3", f"{problem}_train.py"]
        again, _ = resolve(script.get_args_parser().parse_args(words[2:]), problem)
        assert again.output_dir == out

        def run_of(ns):  # the configuration, less what belongs to one invocation (its folder, --config)
            return {k: v for k, v in flags.to_json(vars(ns)).items() if k not in flags.OF_THE_INVOCATION}

        assert run_of(again) == run_of(values)
    short = flags.command(problem, vars(values), output_dir=out)
    assert "--lr 0.125" in " ".join(short) and "--momentum" not in " ".join(short)  # only what differs


def test_the_reports_problem_2_command_runs_as_printed(p2_run, tmp_path, capsys):
    made = make_report.main(make_report.get_args_parser().parse_args(
        ["--p2-run", str(p2_run), "--only", "curves", "--out", str(tmp_path / "report")]))
    assert made["p2_best"]
    index = (tmp_path / "report" / "index.md").read_text()
    block = index.split("```\n")[1].splitlines()
    exact, short = block[0], block[1]
    assert exact.startswith(f"python3 p2_train.py --config {p2_run / 'args.json'} --output-dir {p2_run}-rerun")
    assert short.startswith("python3 p2_train.py --model lraspp --recipe reference ")
    words = shlex.split(short)
    result = p2_train.main(p2_train.get_args_parser().parse_args([*words[2:], "--no-progress"]))
    assert result["epochs"] == 2

    def last_line(run):
        record = json.loads((run / "metrics.jsonl").read_text().splitlines()[-1])
        return {k: record[k] for k in ("train_loss", "val_loss", "val_miou")}

    assert last_line(p2_run.parent / f"{p2_run.name}-rerun") == last_line(p2_run)  # the same run, again


def test_help_shows_the_defaults_of_the_model_and_recipe_asked_for(capsys):
    for argv, shown in ((["--help"], "(default: 300 for vgg13 reference"),
                        (["--model", "beit", "--help"], "(default: 6 for beit reference"),
                        (["--model", "beit", "--recipe", "strong", "--help"], "(default: 0.85 for beit strong")):
        with pytest.raises(SystemExit):
            p1_train.get_args_parser().parse_args(argv)
        text = " ".join(capsys.readouterr().out.split())
        assert shown in text, argv
    assert "beit: layer-wise lr decay" in text and "with --opt sgd: SGD momentum" in text
    assert "vgg13 reference: --epochs 300 --batch-size 128 --opt adamw --lr 0.001" in text
    assert "beit strong: --opt adamw --lr 2e-05" in text


def test_bad_values_are_refused_in_one_line_before_anything_is_made(tmp_path):
    for argv, needle in ((["--epochs", "0"], "--epochs must be positive (got 0)"),
                         (["--ema", "1"], "--ema 1.0: a decay in [0, 1)"),
                         (["--lr", "nan"], "--lr must be positive (got nan)")):
        assert_one_line_error(run_main(p1_train, *argv, "--output-dir", tmp_path / "o"), needle)
    assert not (tmp_path / "o").exists()
    with pytest.raises(UserError, match="--scale-range 2.0,1.0: give LO,HI"):
        flags.check({"scale_range": [2.0, 1.0]}, "p2")
    # An option of some augmentation presets asked of another: refused, not ignored nor a traceback.
    assert_one_line_error(run_main(p1_train, "--augment", "beit", "--cutmix", "0.5", "--output-dir", tmp_path / "o"),
                          "--cutmix 0.5: an option of --augment crop-flip, not of beit")
    for values, needle in (({"augment": "crop-flip", "rand_augment": 9.0},
                            "--rand-augment 9.0: an option of --augment beit, beit-224 or beit-ft, not of crop-flip"),
                           ({"augment": "none", "resized_crop": [0.08, 1.0]}, "--resized-crop 0.08,1.0: an option of"),
                           ({"augment": "beit-ft", "resized_crop": [0.0, 1.0]},
                            r"--resized-crop: every area share must be in \(0, 1\]"),
                           ({"augment": "beit-ft", "resized_crop": [0.9, 0.1]}, "--resized-crop 0.9,0.1: give LO,HI"),
                           ({"augment": "beit-ft", "rand_augment": 11.0},
                            r"--rand-augment 11.0: a magnitude in \[0, 10\]")):
        with pytest.raises(UserError, match=needle):
            flags.check(values, "p1")
    flags.check({"augment": "crop-flip", "rand_augment": 0.0, "resized_crop": [1.0, 1.0]}, "p1")  # off: fine


def _outside(flag):
    """Values just outside ``flag``'s declared range, and a NaN for a float: each as one command-line word."""
    rng, whole = flag.range, flag.type in (int, list)
    values = []
    if rng.low is not None:
        values.append(rng.low if rng.low_open else rng.low - 1)
    if rng.high is not None:
        values.append(rng.high if rng.high_open else rng.high + 1)
    values = [int(v) if whole else float(v) for v in values]
    if not whole:
        values.append(float("nan"))
    # A list flag gets the bad value beside a valid one; --resized-crop's pair stays LO <= HI.
    if flag.type is list:
        return [str(v) for v in values]
    if flag.type is float_list:
        return [f"{v},{v}" if flag.name in ("scale_range", "resized_crop") else f"1,{v}" for v in values]
    return [str(v) for v in values]


NUMERIC = [(problem, flag) for problem in flags.PROBLEMS for flag in flags.flags_of(problem)
           if flag.type in (int, float, list, float_list)]


def test_every_numeric_flag_declares_its_range_and_help_shows_it(capsys):
    assert NUMERIC and all(flag.range is not None for _, flag in NUMERIC)
    for script in (p1_train, p2_train):
        with pytest.raises(SystemExit):
            script.get_args_parser().parse_args(["--help"])
        text = " ".join(capsys.readouterr().out.split())
        assert "SGD momentum; in [0, 1)" in text and "learning rate; positive" in text


@pytest.mark.parametrize("problem, flag", NUMERIC, ids=[f"{p}-{f.name}" for p, f in NUMERIC])
def test_a_numeric_flag_outside_its_range_is_refused_in_one_line_with_nothing_written(problem, flag, tmp_path):
    script = p1_train if problem == "p1" else p2_train
    for word in _outside(flag):
        out = tmp_path / "run"
        assert_one_line_error(run_main(script, flag.option, *word.split(" "), "--output-dir", out), flag.option)
        assert not out.exists()


def test_the_readme_lists_the_flags_a_resume_keeps_as_declared():
    text = (REPO / "README.md").read_text().split("## Interruptions and resume", 1)[1]
    listed = text.split("declaration's `kept`):", 1)[1].split("Those would", 1)[0]
    assert set(re.findall(r"`(--[a-z-]+)`", listed)) == {f.option for f in flags.FLAGS if f.kept}
