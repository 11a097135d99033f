"""Where SSL pays, on the virtual atlas (docs/simulator.md): the paper's experiments end to end, by config.

    python scripts/experiments/simulator.py --jobs 2              # the study of docs/science.md (wall time there)
    python scripts/experiments/simulator.py --preset ci --out /tmp/sim_ci   # the CI control (~4 min)
    python scripts/experiments/simulator.py --report-only         # tables again from the runs on disk

Every step is a cellssl app with the study's experiment configs (conf/experiment/simulator_*.yaml), so the same
commands run on a cluster with ``--extra hydra/launcher=slurm --extra cluster=<site>``:

1. ``cellssl-prepare source=virtual_atlas``: a structured auxiliary atlas, its null (``variant=unrelated``) and
   a target of the structured world (other donors, a new batch, 10 % of genes missing and 100 extra).
2. ``cellssl-train -m experiment=simulator_pretrain``: each method on each auxiliary atlas, seeds swept.
3. ``cellssl-finetune -m experiment=simulator_readout``: full fine-tuning, frozen encoder and linear probe of each
   checkpoint on the target with 1 %, 10 % and 100 % of its training donors labelled, against from scratch;
   seed s reads out the checkpoint of pretraining seed s.
4. ``cellssl-evaluate -m experiment=simulator_readout``: kNN of each checkpoint under the same label budgets,
   and PCA and scVI on the target.
5. Data scaling: ``experiment=simulator_scaling`` pretrains on donor fractions of the structured atlas; kNN read-out.
6. ``cellssl-report`` over the read-outs and the scaling runs (figures), then the tables (mean ± s.d. over
   seeds) into ``--doc``.

A step whose outputs are all there is skipped, so an interrupted study continues where it stopped (wall times of
every step are kept in ``<out>/timings.json``, the whole study's, summed over invocations, in ``<out>/wall.json``).
Steps 2–4 run in three lanes (the structured atlas, the null, the baselines with data scaling); ``--jobs N`` runs
N lanes at once with the cores shared among them.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from functools import partial
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from simulator_tables import write_doc

ROOT = Path(__file__).resolve().parents[2]
METHODS = ["mae", "mae_programme", "byol", "barlow_twins"]
PRESETS = {
    # the study in docs/science.md: 100k-cell auxiliary atlases (2,000 genes), a 20k-cell target, 5 seeds
    "study": {
        "aux_cells": 100_000,
        "target_cells": 20_000,
        "world": [],
        "pretraining": [],  # experiment=simulator_pretrain as it is: 300 steps
        "seeds": [0, 1, 2, 3, 4],
        "methods": METHODS,
        "label_fractions": [0.01, 0.1, 1.0],
        # read-outs per atlas ("scratch": the classifier from a random encoder); frozen is left out on the null and
        # from scratch for time on a 2-core machine
        "modes": {
            "structured": ["full", "frozen", "linear_probe"],
            "unrelated": ["full", "linear_probe"],
            "scratch": ["full", "linear_probe"],
        },
        "scaling_fractions": [0.01, 0.1],
        "scaling_label_fractions": [0.1],
        "scvi_epochs": 20,
    },
    # the CI control (tests/experiments/test_simulator_study.py): a small world, one masked autoencoder per
    # atlas, kNN read-out only
    "ci": {
        "aux_cells": 6_000,
        "target_cells": 3_000,
        "world": ["virtual_atlas.n_genes=600", "virtual_atlas.n_programmes=30", "virtual_atlas.n_regulons=5"],
        "pretraining": ["trainer.max_steps=150", "trainer.val_check_interval=75"],  # CI's time
        "seeds": [0, 1],
        "methods": ["mae"],
        "label_fractions": [1.0],
        "modes": {"structured": [], "unrelated": [], "scratch": []},
        "scaling_fractions": [],
        "scaling_label_fractions": [],
        "scvi_epochs": 0,
    },
}
VARIANTS = {"structured": "auxiliary", "unrelated": "null"}


class Study:
    """The study's folders, its common overrides and a timed, skippable runner of cellssl apps."""

    def __init__(self, out: Path, preset: dict, extra: list[str], logger: str, jobs: int = 1) -> None:
        self.out, self.preset = out, preset
        self.common = [f"logger={logger}", "trainer.enable_progress_bar=false", *extra]
        self.timings_path = out / "timings.json"
        self.timings = json.loads(self.timings_path.read_text()) if self.timings_path.exists() else {}
        self.lock = threading.Lock()
        # concurrent lanes share the cores: each app gets its share of torch's threads
        self.env = {**os.environ, "HYDRA_FULL_ERROR": "1"}
        if jobs > 1:
            self.env["OMP_NUM_THREADS"] = str(max(1, (os.cpu_count() or 1) // jobs))

    def store(self, name: str) -> Path:
        return self.out / "data" / f"{name}.zarr"

    def run(self, step: str, args: list[str], done: list[Path]) -> None:
        """Run ``args`` unless every path in ``done`` exists; record its wall time under ``step``."""
        if done and all(path.exists() for path in done):
            print(f"[study] {step}: done already", flush=True)
            return
        print(f"[study] {step}: {' '.join(args)}", flush=True)
        started = time.perf_counter()
        app = Path(sys.executable).parent / args[0]  # this environment's apps, whatever PATH holds
        args = [str(app) if app.exists() else args[0], *args[1:]]
        subprocess.run(args, check=True, cwd=self.out, env=self.env)
        with self.lock:
            self.timings[step] = round(time.perf_counter() - started, 1)
            self.timings_path.write_text(json.dumps(self.timings, indent=2))

    def checkpoints(self, folder: Path, methods: list[str]) -> list[Path]:
        seeds = self.preset["seeds"]
        return [folder / m / str(s) / "checkpoints" / "last.ckpt" for m in methods for s in seeds]


def prepare(study: Study) -> None:
    world = study.preset["world"]
    roles = {
        "auxiliary": ["virtual_atlas.role=auxiliary", f"virtual_atlas.auxiliary.n_cells={study.preset['aux_cells']}"],
        "null": ["virtual_atlas.variant=unrelated", f"virtual_atlas.auxiliary.n_cells={study.preset['aux_cells']}"],
        "target": ["virtual_atlas.role=target", f"virtual_atlas.target.n_cells={study.preset['target_cells']}"],
    }
    for name, role in roles.items():
        output = study.store(name)
        args = ["cellssl-prepare", "source=virtual_atlas", f"output={output}", "virtual_atlas.processes=2"]
        study.run(f"prepare {name}", [*args, *world, *role], [output])


def pretrain(study: Study, variant: str) -> None:
    """Each method on one auxiliary atlas (structured or null), seeds swept."""
    seeds, name = ",".join(map(str, study.preset["seeds"])), VARIANTS[variant]
    for method in study.preset["methods"]:
        folder = study.out / "pretrain" / variant / method
        args = ["cellssl-train", "-m", "experiment=simulator_pretrain", f"model={method}", f"seed={seeds}"]
        args += [f"data.store_path={study.store(name)}", f"hydra.sweep.dir={folder}", *study.preset["pretraining"]]
        if method == "mae_programme":  # the atlas's own programmes (the null's are unrelated to the target's)
            args.append(f"model.masking.programmes.path={study.out / 'data' / f'{name}.programmes.gmt'}")
        done = study.checkpoints(study.out / "pretrain" / variant, [method])
        study.run(f"pretrain {variant} {method}", [*args, *study.common], done)


def _readout_sweep(study: Study) -> tuple[list[str], list[str]]:
    """The read-outs' common overrides: the target, the experiment, and the seeds × label budgets swept."""
    preset = study.preset
    sweep = [f"seed={','.join(map(str, preset['seeds']))}", f"data.donor_fraction={_list(preset['label_fractions'])}"]
    return [f"data.store_path={study.store('target')}", "experiment=simulator_readout"], sweep


def readout(study: Study, variant: str) -> None:
    """Fine-tuning and kNN of one atlas's checkpoints on the target."""
    preset, (target, sweep) = study.preset, _readout_sweep(study)
    knn = ["evaluation.baselines=[]", "evaluation.reconstruction=false"]
    pretraining = [f"pretraining_dir={study.out / 'pretrain' / variant}"]
    pretraining.append(f"pretraining_method={','.join(preset['methods'])}")
    folder = study.out / "readout" / variant
    modes = f"mode={','.join(preset['modes'][variant])}"
    args = ["cellssl-finetune", "-m", *target, *pretraining, modes, *sweep, f"hydra.sweep.dir={folder}/finetune"]
    if preset["modes"][variant]:
        study.run(f"finetune {variant}", [*args, *study.common], [folder / "finetune" / "multirun.yaml"])
    args = ["cellssl-evaluate", "-m", *target, *pretraining, *sweep, *knn, f"hydra.sweep.dir={folder}/knn"]
    study.run(f"knn {variant}", [*args, *study.common], [folder / "knn" / "multirun.yaml"])


def baselines(study: Study) -> None:
    """The classifier from scratch (random encoder) and kNN of PCA and scVI on the target."""
    preset, (target, sweep) = study.preset, _readout_sweep(study)
    folder = study.out / "readout" / "baselines"
    modes = f"mode={','.join(preset['modes']['scratch'])}"
    args = ["cellssl-finetune", "-m", *target, "pretrained=null", modes, *sweep, f"hydra.sweep.dir={folder}/finetune"]
    if preset["modes"]["scratch"]:
        study.run("finetune from scratch", [*args, *study.common], [folder / "finetune" / "multirun.yaml"])
    scvi = [f"evaluation.scvi.max_epochs={preset['scvi_epochs']}"] if preset["scvi_epochs"] else []
    baselines = "evaluation.baselines=[pca,scvi]" if scvi else "evaluation.baselines=[pca]"
    args = ["cellssl-evaluate", "-m", *target, "pretrained=null", *sweep, baselines, "evaluation.reconstruction=false"]
    args += [*scvi, f"hydra.sweep.dir={folder}/knn"]
    study.run("knn baselines", [*args, *study.common], [folder / "knn" / "multirun.yaml"])


def scaling(study: Study) -> None:
    """MAE pretrained on donor fractions of the structured atlas (the 100 % runs are step 2's), read out by kNN."""
    preset = study.preset
    if not preset["scaling_fractions"]:
        return
    seeds = ",".join(map(str, preset["seeds"]))
    folder = study.out / "scaling"
    args = ["cellssl-train", "-m", "experiment=simulator_scaling", "model=mae", f"seed={seeds}", *preset["pretraining"]]
    args += [f"data.donor_fraction={_list(preset['scaling_fractions'])}", f"data.store_path={study.store('auxiliary')}"]
    done = [folder / "pretrain" / str(f) / str(s) / "checkpoints" / "last.ckpt" for f in preset["scaling_fractions"]
            for s in preset["seeds"]]  # fmt: skip
    study.run("scaling pretrain", [*args, f"hydra.sweep.dir={folder}/pretrain", *study.common], done)
    args = ["cellssl-evaluate", "-m", f"data.store_path={study.store('target')}", "experiment=simulator_readout"]
    args += [f"pretraining_dir={folder / 'pretrain'}", f"pretraining_method={_list(preset['scaling_fractions'])}"]
    args += [f"seed={seeds}", f"data.donor_fraction={_list(preset['scaling_label_fractions'])}"]
    args += ["evaluation.baselines=[]", "evaluation.reconstruction=false", f"hydra.sweep.dir={folder}/knn"]
    study.run("scaling knn", [*args, *study.common], [folder / "knn" / "multirun.yaml"])


def report(study: Study) -> None:
    """cellssl-report over the read-outs (both atlases and the baselines) and over the data-scaling runs: summary
    tables, runs.csv (what the tables here are made from) and the figure."""
    for name, runs in {"readout": study.out / "readout", "scaling": study.out / "scaling" / "knn"}.items():
        if runs.exists():
            title = f"title='virtual atlas, {name}: pretrained on an auxiliary atlas, read out on the target'"
            args = ["cellssl-report", f"multirun_dir={runs}", f"hydra.run.dir={study.out / 'report' / name}", title]
            study.run(f"report {name}", args, [])


def _atlas_lane(study: Study, variant: str) -> None:
    pretrain(study, variant)
    readout(study, variant)


def _baseline_lane(study: Study) -> None:
    baselines(study)
    scaling(study)


def _list(values: list) -> str:
    return ",".join(str(v) for v in values)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--preset", choices=sorted(PRESETS), default="study")
    parser.add_argument("--out", type=Path, default=ROOT / "logs" / "simulator_study")
    parser.add_argument("--doc", type=Path, default=None, help="write the tables here (study: docs/science.md)")
    parser.add_argument("--logger", default="csv", help="csv or wandb (offline unless WANDB_MODE says otherwise)")
    parser.add_argument("--extra", action="append", default=[], help="an override for every app, e.g. trainer=gpu")
    parser.add_argument("--report-only", action="store_true", help="only the report and tables from the runs")
    parser.add_argument("--jobs", type=int, default=1, help="lanes run at once (atlases, baselines), cores shared")
    parser.add_argument("--methods", default=None, help="comma list of pretraining methods (default: the preset's)")
    args = parser.parse_args()
    preset = PRESETS[args.preset]
    if args.methods:
        preset = {**preset, "methods": args.methods.split(",")}
    args.out.mkdir(parents=True, exist_ok=True)
    study = Study(args.out.resolve(), preset, args.extra, args.logger, args.jobs)
    if not args.report_only:
        started = time.perf_counter()
        prepare(study)
        lanes = [partial(_atlas_lane, study, variant) for variant in VARIANTS]
        lanes.append(partial(_baseline_lane, study))
        with ThreadPoolExecutor(max_workers=args.jobs) as pool:
            for finished in [pool.submit(lane) for lane in lanes]:
                finished.result()
        # a resumed study adds its wall time to the earlier invocations'
        wall_path = study.out / "wall.json"
        before = json.loads(wall_path.read_text())["wall_s"] if wall_path.exists() else 0.0
        wall = {"wall_s": round(before + time.perf_counter() - started, 1), "jobs": args.jobs}
        wall_path.write_text(json.dumps(wall))
    report(study)
    doc = args.doc or (ROOT / "docs" / "science.md" if args.preset == "study" else args.out / "science.md")
    write_doc(study.out, preset, doc, study.timings)
    print(f"[study] tables: {doc}")


if __name__ == "__main__":
    main()
