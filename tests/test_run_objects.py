"""The objects a training run is made of: its state, its updater, its flags, and the house rules
that keep the code one design (no script imports another; no function with two dozen parameters)."""
import argparse
import ast
import json
import math
import shutil
import signal

import pytest
import torch

import make_report
import p1_features
import p1_inference
import p1_train
import p2_masks
from tests.conftest import CPU_FP32, REPO, assert_one_line_error, run_main
from training.optim import Updater
from figures.runs import rerun_commands
from training.run import Resume, TrainState
from training.trainer import StopOnSignal
from utils.checkpoint import FORMAT, load_checkpoint, model_entries, save_checkpoint
from utils.errors import UserError


def make_updater(model, sched="cosine", epochs=2, steps=3, opt="sgd"):
    # The flags it leaves out take their declared off values.
    args = argparse.Namespace(opt=opt, lr=0.1, weight_decay=0.0, momentum=0.9, sched=sched, epochs=epochs)
    return Updater.from_flags(args, model, steps_per_epoch=steps, device=torch.device("cpu"),
                              amp_dtype=None)


def test_train_state_keeps_the_first_best_epoch():
    state = TrainState()
    assert state.epoch == 0 and state.best_metric == -math.inf
    assert state.end_epoch({"epoch": 1, "val_acc": 0.5}, "val_acc")
    assert not state.end_epoch({"epoch": 2, "val_acc": 0.5}, "val_acc")  # equal is not better
    assert state.end_epoch({"epoch": 3, "val_acc": 0.75}, "val_acc")
    assert not state.end_epoch({"epoch": 4, "val_acc": 0.25}, "val_acc")
    assert (state.epoch, state.best_metric, state.best_epoch, state.record["epoch"]) == (4, 0.75, 3, 4)


def test_a_checkpoint_restores_weights_optimiser_schedule_rng_and_state(tmp_path):
    torch.manual_seed(0)
    model = torch.nn.Linear(3, 2)
    updater = make_updater(model)
    for _ in range(2):
        updater.step(model(torch.randn(4, 3)).pow(2).mean())
    state = TrainState(epoch=1, best_metric=0.5, best_epoch=1, record={"epoch": 1, "val_acc": 0.5})
    state.partial = {"train": {"step": 2, "lr": 0.1, "loss_sum": 1.5, "samples": 8, "skipped": 0}, "rng": {},
                     "device": "cpu", "batch_size": 4, "seed": 0}
    entries = model_entries(problem="p1", arch="vgg13", model_kwargs={"num_classes": 2}, mean=[0.5], std=[0.5], args={})
    save_checkpoint(state.checkpoint(model, updater, entries), tmp_path / "c.pth")
    expected_draw = torch.rand(3)  # the global RNG continues from the saved state on resume

    ckpt = load_checkpoint(tmp_path / "c.pth")
    assert ckpt["format"] == FORMAT and ckpt["step"] == 2 and ckpt["arch"] == "vgg13"
    other = torch.nn.Linear(3, 2)
    other_updater = make_updater(other)
    resumed = Resume(tmp_path / "c.pth", ckpt).restore(other, other_updater)
    assert resumed == state
    assert all(torch.equal(a, b) for a, b in zip(model.state_dict().values(), other.state_dict().values()))
    assert other_updater.lr == updater.lr and other_updater.scheduler.last_epoch == 2
    assert torch.equal(torch.rand(3), expected_draw)
    # Both take the same next step.
    x = torch.randn(4, 3)
    updater.step(model(x).pow(2).mean())
    other_updater.step(other(x).pow(2).mean())
    assert torch.equal(model.weight, other.weight)


def test_updater_steps_the_optimiser_then_the_schedule():
    model = torch.nn.Linear(1, 1, bias=False)
    torch.nn.init.ones_(model.weight)
    updater = make_updater(model, sched="cosine", epochs=1, steps=2)
    updater.step(model(torch.ones(1, 1)).sum())  # d/dw (w * 1) = 1: w = 1 - 0.1 * 1
    assert model.weight.item() == pytest.approx(0.9)
    assert updater.lr == pytest.approx(0.05)  # cosine over 2 steps: half-way after one


def test_a_checkpoint_of_a_later_format_is_refused_naming_it(tmp_path, p1_run):
    ckpt = load_checkpoint(p1_run / "last.pth")
    save_checkpoint({**ckpt, "format": FORMAT + 1}, tmp_path / "future.pth")
    with pytest.raises(UserError, match=f"checkpoint format {FORMAT + 1} is newer than this code reads "
                                        f"\\(format {FORMAT}\\)"):
        load_checkpoint(tmp_path / "future.pth")


@pytest.mark.parametrize("older", [None, FORMAT - 1])
def test_a_checkpoint_of_an_earlier_format_is_refused_naming_it(p1_run, p1_data, tmp_path, older):
    old = load_checkpoint(p1_run / "last.pth")
    if older is None:
        del old["format"]  # written before the entry: format 1
    else:
        old["format"] = older
    save_checkpoint(old, tmp_path / "last.pth")
    found = 1 if older is None else older
    for script, argv in ((p1_train, ["--resume", tmp_path / "last.pth"]),
                         (p1_inference, ["--checkpoint", tmp_path / "last.pth", p1_data[1], tmp_path / "out.csv"])):
        proc = run_main(script, *argv)
        assert_one_line_error(proc, f"{tmp_path / 'last.pth'}: checkpoint format {found}, of an earlier release of "
                                    f"this code (this one reads format {FORMAT}); retrain, or use the release that "
                                    "wrote it")
    assert not (tmp_path / "out.csv").exists()


def test_mid_epoch_resume_refuses_a_flag_that_changes_the_numbers(p1_run, tmp_path):
    ckpt = load_checkpoint(p1_run / "last.pth")
    ckpt["partial"] = {"train": {"step": 1, "lr": 1e-3, "loss_sum": 1.0, "samples": 16, "skipped": 0}, "rng": {},
                       "device": "cpu", "batch_size": 16, "seed": 0}
    save_checkpoint({**ckpt, "epoch": 3, "args": {**ckpt["args"], "output_dir": str(tmp_path)}},
                    tmp_path / "last.pth")
    proc = run_main(p1_train, "--resume", tmp_path / "last.pth", "--lr", "0.01")
    assert_one_line_error(proc, "stopped part-way through epoch 4 with lr 0.001; it continues only with the "
                                "same lr (this run has 0.01)")


def test_mid_epoch_resume_keeps_the_precision_and_takes_a_choice_of_auto_saved_before_runs_recorded_it(tmp_path):
    partial = {"train": {"step": 1}, "device": "cpu"}
    cpu = torch.device("cpu")
    with pytest.raises(UserError, match="with amp off; it continues only with the same amp .this run has bf16."):
        Resume(tmp_path / "last.pth", {"epoch": 1, "partial": partial, "args": {"amp": "off", "epochs": 2}}).check(
            {"amp": "bf16", "epochs": 2}, cpu)
    # args.json held "auto" before a run recorded what it chose: no precision to keep, so no refusal
    # (none could pass: "auto" is resolved before the check).
    Resume(tmp_path / "last.pth", {"epoch": 1, "partial": partial, "args": {"amp": "auto", "epochs": 2}}).check(
        {"amp": "bf16", "epochs": 2}, cpu)


def test_help_lists_every_recipe():
    text = p1_train.get_args_parser().format_help()
    assert "vgg13 reference: --epochs 300 --batch-size 128 --opt adamw --lr 0.001" in text
    assert "beit reference: --epochs 6 --batch-size 32 --opt sgd --lr 0.003" in text
    assert "vgg13 strong:    --opt sgd --nesterov" in text and "beit strong:" in text
    assert "--amp {auto,bf16,fp16,off}" in text and "(default: auto, or the resumed run's)" in " ".join(text.split())


# demo.py is left out: its job is to run each of these end to end, as a user would, in one process.
ENTRY_SCRIPTS = ("p1_train", "p2_train", "p1_inference", "p2_inference", "p1_features", "p2_masks", "make_report",
                 "mean_iou_evaluate", "hw1_download")
# What each package may import of the others: utils/ is the ground floor, models/ and datasets/ stand on
# it, inference on those, the flags and recipes (config/) on those, and the training loop and the report
# figures (figures/) side by side on all of them: figures/ reads runs without the training loop.
FLOORS = {"utils": set(), "models": {"utils"}, "datasets": {"utils"}, "inference": {"utils", "models", "datasets"},
          "config": {"utils", "models", "datasets", "inference"},
          "training": {"utils", "models", "datasets", "inference", "config"},
          "figures": {"utils", "models", "datasets", "inference", "config"}}


def _python_files(*folders):
    return [p for folder in folders for p in sorted((REPO / folder).glob("*.py"))]


def _imports(path):
    """The project modules a file imports (``utils.args``, ``models``, ``p1_train``, ...)."""
    tree = ast.parse(path.read_text())
    names = {alias.name for node in ast.walk(tree) if isinstance(node, ast.Import) for alias in node.names}
    for node in ast.walk(tree):
        if isinstance(node, ast.ImportFrom) and node.module:
            names.add(node.module)
            # "from utils import distributed" imports the module utils.distributed
            names |= {f"{node.module}.{a.name}" for a in node.names
                      if (REPO / node.module.replace(".", "/") / f"{a.name}.py").is_file()}
    return {n for n in names if n.split(".")[0] in {*FLOORS, *ENTRY_SCRIPTS, "demo"}}


def test_no_entry_script_imports_another():
    for script in ENTRY_SCRIPTS:
        imported = {name.split(".")[0] for name in _imports(REPO / f"{script}.py")}
        assert not imported & set(ENTRY_SCRIPTS), (script, imported & set(ENTRY_SCRIPTS))


def test_each_package_imports_only_the_floors_below_it():
    for package, below in FLOORS.items():
        for path in _python_files(package):
            imported = {name.split(".")[0] for name in _imports(path)} - {package}
            assert imported <= below, f"{package}/{path.name} imports {sorted(imported - below)}"


def test_no_module_imports_another_modules_private_name():
    for path in [*_python_files(*FLOORS), *(REPO / f"{script}.py" for script in ENTRY_SCRIPTS)]:
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, ast.ImportFrom) and node.module and node.module.split(".")[0] in FLOORS:
                private = [a.name for a in node.names if a.name.startswith("_")]
                assert not private, f"{path.relative_to(REPO)} imports {node.module}.{', '.join(private)}"


def test_the_import_graph_has_no_cycle():
    modules = {f"{p.parent.name}.{p.stem}".removesuffix(".__init__"): p for p in _python_files(*FLOORS)}
    graph = {m: {n for n in _imports(p) if n in modules and n != m} for m, p in modules.items()}
    done, stack = set(), []

    def visit(m):
        assert m not in stack, "import cycle: " + " -> ".join(stack[stack.index(m):] + [m])
        if m in done:
            return
        stack.append(m)
        for n in graph[m]:
            visit(n)
        stack.pop()
        done.add(m)

    for m in graph:
        visit(m)


def test_library_functions_take_at_most_ten_parameters():
    for path in _python_files(*FLOORS):
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef)):
                a = node.args
                count = len(a.posonlyargs) + len(a.args) + len(a.kwonlyargs)
                count -= bool(a.args and a.args[0].arg in ("self", "cls"))
                assert count <= 10, f"{path.name}:{node.lineno} {node.name} takes {count} parameters"


def test_a_run_moved_to_another_folder_resumes_there_from_any_working_directory(p1_data, tmp_path, monkeypatch,
                                                                                capsys):
    """Started with relative paths in one directory, stopped part-way, moved, resumed from another."""
    start, elsewhere = tmp_path / "start", tmp_path / "elsewhere"
    start.mkdir()
    elsewhere.mkdir()
    shutil.copytree(p1_data[0], start / "train")
    shutil.copytree(p1_data[1], start / "val")
    monkeypatch.chdir(start)
    asked = []

    def stop_after_step_2(self):  # SIGTERM arrives during step 2
        asked.append(1)
        self.signum = signal.SIGTERM if len(asked) >= 2 else None
        return self.signum is not None

    monkeypatch.setattr(StopOnSignal, "__call__", stop_after_step_2)
    proc = run_main(p1_train, "--train-dir", "train", "--val-dir", "val", "--output-dir", "run", "--epochs", "2",
                    "--batch-size", "16", *CPU_FP32, "--no-progress")
    assert proc.returncode == 128 + signal.SIGTERM, proc.stderr
    saved = json.loads((start / "run" / "args.json").read_text())
    assert all(saved[k] == str(start / v) for k, v in (("train_dir", "train"), ("val_dir", "val"),
                                                      ("output_dir", "run")))  # absolute
    monkeypatch.undo()
    shutil.move(start / "run", elsewhere / "moved")
    monkeypatch.chdir(elsewhere)
    p1_train.main(p1_train.get_args_parser().parse_args(["--resume", "moved/last.pth", "--no-progress"]))
    out = capsys.readouterr().out
    assert f"resuming {elsewhere / 'moved' / 'last.pth'}: 0 of 2 epochs done; epoch 1 goes on after its step 2" in out
    assert load_checkpoint(elsewhere / "moved" / "last.pth")["epoch"] == 2
    assert not (start / "run").exists()  # written where the run is now, not where it was
    # The reproduce command of the report runs into a new folder beside the run's.
    exact, short = rerun_commands(elsewhere / "moved", "p1")
    assert exact.endswith(f"--config {elsewhere / 'moved' / 'args.json'} --output-dir {elsewhere / 'moved'}-rerun")
    assert f"--output-dir {elsewhere / 'moved'}-rerun" in short and f"--train-dir {start / 'train'}" in short


def test_figures_of_the_other_problems_run_are_refused_in_one_line(p1_run, p2_run, tmp_path):
    out = tmp_path / "report"
    proc = run_main(make_report, "--p1-run", p2_run, "--out", out, *CPU_FP32, "--only", "curves")
    assert_one_line_error(proc, f"--p1-run {p2_run}: a Problem 2 run (it logs val_miou); this needs a Problem 1 "
                                "run, of p1_train.py")
    assert not out.exists()
    proc = run_main(make_report, "--p2-run", p1_run, "--out", out, *CPU_FP32)
    assert_one_line_error(proc, f"--p2-run {p1_run}: a Problem 1 run")
    proc = run_main(p2_masks, "--run", p1_run, "--out", out, *CPU_FP32)
    assert_one_line_error(proc, f"--run {p1_run}: a Problem 1 run", "p2_train.py")
    proc = run_main(p1_features, "--run", p2_run, "--out", out, *CPU_FP32)
    assert_one_line_error(proc, f"--run {p2_run}: a Problem 2 run", "p1_train.py")
    assert not out.exists()
