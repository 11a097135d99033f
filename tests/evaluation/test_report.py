"""cellssl-report on hand-written metrics.json files: runs are labelled by their pretraining (method, masking,
checkpoint) and read-out mode, two checkpoints of one method stay two rows, only seeds are grouped, and the
figure has one panel per data set, a y label that says what it shows and its legend below the panels."""

from __future__ import annotations

import json
from pathlib import Path
from types import SimpleNamespace

import matplotlib.colors as mcolors
import pandas as pd
import pytest
import yaml
from hydra import compose, initialize_config_dir
from hydra.core.global_hydra import GlobalHydra
from omegaconf import open_dict

from cellssl.evaluation.identity import (
    MODEL_NAMES,
    checkpoint_title,
    masking_description,
    pretraining_identity,
    run_label,
)
from cellssl.evaluation.report import label_runs, order_runs, pretraining_colours, summary_figure, zero_shot_rows
from cellssl.tasks import config_dir
from cellssl.tasks.report import report

MAE = {"_target_": "cellssl.methods.MaskedAutoencoder", "masking": {"_target_": "cellssl.masking.RandomMasking",
       "rate": 0.5}}  # fmt: skip
F1 = {"mae_a": 0.80, "mae_b": 0.70, "scratch": 0.60}


def _pretraining_run(root: Path, name: str, choices: dict | None = None) -> Path:
    """A pretraining run directory with its checkpoint path (the file itself is never read here)."""
    run = root / "train" / "runs" / "default" / name
    (run / "checkpoints").mkdir(parents=True)
    if choices is not None:
        (run / ".hydra").mkdir()
        (run / ".hydra" / "hydra.yaml").write_text(yaml.safe_dump({"hydra": {"runtime": {"choices": choices}}}))
    return run / "checkpoints" / "last.ckpt"


def _write_job(folder: Path, rows: list[dict]) -> None:
    folder.mkdir(parents=True)
    (folder / "metrics.json").write_text(json.dumps({"report_rows": rows}))


def _finetune_row(identity: dict, mode: str, dataset: str, seed: int, f1: float) -> dict:
    return {**identity, "mode": mode, "dataset": dataset, "split": "test", "seed": seed, "macro_f1": f1,
            "accuracy": f1 + 0.1}  # fmt: skip


@pytest.fixture
def sweep(tmp_path) -> tuple[Path, dict[str, dict]]:
    """A multirun of two MAE checkpoints (same method and masking) and from scratch, two modes, three seeds,
    two data sets, and a kNN evaluation of each checkpoint (their PCA baselines identical)."""
    identities = {
        "mae_a": pretraining_identity(_pretraining_run(tmp_path, "2024-05-01_a", {"model": "mae"}), MAE),
        "mae_b": pretraining_identity(_pretraining_run(tmp_path, "2024-06-02_b"), MAE),
        "scratch": pretraining_identity(None, None),
    }
    sweep, job = tmp_path / "finetune" / "multiruns" / "default" / "sweep", 0
    for key, identity in identities.items():
        for mode in ("full", "linear_probe"):
            for dataset in ("pbmc_half", "lung"):
                for seed in (0, 1, 2):
                    f1 = F1[key] - 0.1 * (mode == "linear_probe") + 0.01 * seed
                    _write_job(sweep / str(job), [_finetune_row(identity, mode, dataset, seed, f1)])
                    job += 1
    for key in ("mae_a", "mae_b"):
        knn = SimpleNamespace(
            scores={"encoder": None, "pca": None},
            metrics={"knn/encoder/macro_f1": F1[key] - 0.2, "knn/pca/macro_f1": 0.75, "knn/pca/accuracy": 0.8},
        )
        _write_job(sweep / f"knn_{key}", zero_shot_rows(knn, identities[key], "pbmc_half", "test", 0))
    return sweep, identities


def _report(tmp_path: Path, multirun: Path) -> pd.DataFrame:
    GlobalHydra.instance().clear()
    with initialize_config_dir(config_dir=config_dir(), version_base="1.3"):
        cfg = compose("report", overrides=[f"multirun_dir={multirun}"])
    GlobalHydra.instance().clear()
    with open_dict(cfg):
        cfg.paths.root_dir, cfg.paths.output_dir = str(tmp_path), str(tmp_path / "report")
    return report(cfg)


def test_model_names_are_the_conf_model_configs():
    for path in sorted((Path(config_dir()) / "model").glob("*.yaml")):
        target = yaml.safe_load(path.read_text()).get("_target_")
        if target:
            assert MODEL_NAMES[target.rsplit(".", 1)[-1]] == path.stem


@pytest.mark.parametrize(
    ("masking", "words"),
    [
        ({"_target_": "cellssl.masking.RandomMasking", "rate": 0.5}, "random 50%"),
        ({"_target_": "cellssl.masking.GeneProgrammeMasking", "rate": 0.25, "programmes": {}}, "programme 25%"),
        ({"_target_": "cellssl.masking.ProgrammeToTFMasking", "regulons": {}}, "programme → TF"),
        (None, ""),
    ],
)
def test_masking_in_words(masking, words):
    assert masking_description(masking) == words


def test_identity_from_the_checkpoint_and_its_run(tmp_path):
    choices = {"experiment": "paper_mae", "model": "mae_programme"}
    ckpt = _pretraining_run(tmp_path, "run_a", choices)
    programme = {**MAE, "masking": {"_target_": "cellssl.masking.GeneProgrammeMasking", "rate": 0.5}}
    identity = pretraining_identity(ckpt, programme)
    assert identity == {
        "experiment": "paper_mae",
        "method": "mae_programme",
        "masking": "programme 50%",
        "checkpoint": str(ckpt),
        "pretrain_run": str(ckpt.parents[1]),
        "recipe": "",  # no .hydra/config.yaml: nothing says another checkpoint shares its recipe
        "encoder_recipe": identity["encoder_recipe"],  # the architecture, shared by the random-encoder baselines
    }
    assert run_label(identity, "linear_probe") == "MAE programme 50% · linear probe"
    byol = pretraining_identity(_pretraining_run(tmp_path, "run_b"), {"_target_": "cellssl.methods.BYOL"})
    assert (byol["method"], byol["experiment"], byol["masking"]) == ("byol", "", "")  # no .hydra: from the class
    assert run_label(byol, "knn") == "BYOL · kNN zero-shot"
    scratch = pretraining_identity(None, None)
    assert scratch["checkpoint"] == "from scratch" and run_label(scratch, "full") == "from scratch · full"
    model = SimpleNamespace(checkpoint=str(ckpt), module=SimpleNamespace(model_config=programme))
    assert checkpoint_title(model) == "MAE programme 50% — run_a/checkpoints/last.ckpt"


def test_two_checkpoints_of_one_method_stay_two_rows_and_seeds_group(tmp_path, sweep):
    multirun, identities = sweep
    summary = _report(tmp_path, multirun).set_index(["dataset", "label"])
    lung = summary.loc["lung"]
    assert set(lung.index) == {
        "MAE random 50% (2024-05-01_a) · full",
        "MAE random 50% (2024-06-02_b) · full",
        "from scratch · full",
        "MAE random 50% (2024-05-01_a) · linear probe",
        "MAE random 50% (2024-06-02_b) · linear probe",
        "from scratch · linear probe",
    }
    row = lung.loc["MAE random 50% (2024-06-02_b) · linear probe"]
    assert row["macro_f1_count"] == 3 and row["seeds"] == "0,1,2"
    assert row["macro_f1_mean"] == pytest.approx(0.61) and row["macro_f1_std"] == pytest.approx(0.01)
    assert (row["method"], row["masking"]) == ("mae", "random 50%")
    assert row["checkpoint"] == identities["mae_b"]["checkpoint"]
    knn = summary.loc["pbmc_half"]
    assert knn.loc["MAE random 50% (2024-05-01_a) · kNN zero-shot", "macro_f1_mean"] == pytest.approx(0.6)
    assert knn.loc["PCA · kNN zero-shot", "macro_f1_count"] == 1  # the same baseline from two runs, kept once

    runs = pd.read_csv(tmp_path / "report" / "runs.csv", keep_default_na=False)
    first = ["experiment", "method", "masking", "checkpoint", "mode", "dataset", "split", "seed"]
    assert list(runs.columns[:8]) == first
    assert len(runs) == 3 * 2 * 2 * 3 + 2 + 1
    assert set(runs.loc[runs["method"] == "scratch", "checkpoint"]) == {"from scratch"}
    table = (tmp_path / "report" / "summary.md").read_text()
    assert "| lung      | from scratch · linear probe" in table and "0.510 ± 0.010 (3)" in table
    assert (tmp_path / "report" / "summary.png").stat().st_size > 10_000


def test_summary_figure_one_panel_per_data_set_legend_below(sweep):
    multirun, _ = sweep
    rows = [json.loads(p.read_text())["report_rows"] for p in sorted(multirun.rglob("metrics.json"))]
    runs = order_runs(label_runs(pd.DataFrame([r for job in rows for r in job])))
    fig = summary_figure(runs, "macro_f1", "title")
    fig.canvas.draw()
    assert len(fig.axes) == 2 and [ax.get_title() for ax in fig.axes] == ["lung", "pbmc_half"]
    assert fig.axes[0].get_ylabel() == "macro F1 (test split)"
    modes = [[t.get_text().replace("\n", " ") for t in ax.get_xticklabels()] for ax in fig.axes]
    assert modes == [["full", "linear probe"], ["full", "linear probe", "kNN zero-shot"]]
    (legend,) = fig.legends
    box, width = legend.get_window_extent(), fig.bbox.width
    assert box.y1 <= min(ax.get_window_extent().y0 for ax in fig.axes)  # below the panels
    assert box.width <= width and box.x0 >= 0
    assert {t.get_text() for t in legend.get_texts()} == set(runs["pretraining"])
    colours = pretraining_colours(runs)
    for name in ("from scratch", "PCA"):
        red, green, blue = mcolors.to_rgb(colours[name])
        assert red == green == blue  # grey
    # the same pretraining has the same colour in both panels
    faces = [{mcolors.to_hex(p.get_facecolor()) for p in ax.patches} for ax in fig.axes]
    assert faces[0] <= faces[1] and len(faces[0]) == 3


def test_checkpoints_of_one_recipe_with_other_seeds_group_as_seeds_and_other_recipes_do_not(tmp_path):
    """A pretraining sweep over seeds gives one checkpoint per seed: they are seeds of one pretraining. A run whose
    config differs in anything but the seed and paths (here the epochs) is another pretraining, named apart."""
    rows = []
    for seed, epochs in [(0, 20), (1, 20), (2, 20), (0, 40)]:
        ckpt = _pretraining_run(tmp_path, f"run_{seed}_{epochs}", {"model": "mae"})
        config = {"seed": seed, "paths": {"output_dir": str(ckpt.parents[1])}, "trainer": {"max_epochs": epochs}}
        (ckpt.parents[1] / ".hydra" / "config.yaml").write_text(yaml.safe_dump(config))
        rows.append(_finetune_row(pretraining_identity(ckpt, MAE), "knn", "pbmc", seed, 0.5 + seed / 10))
    labels = label_runs(pd.DataFrame(rows))["pretraining"].tolist()
    assert labels[0] == labels[1] == labels[2] != labels[3]
    assert labels[0].startswith("MAE random 50% (") and labels[3].startswith("MAE random 50% (")


def test_random_encoders_of_one_architecture_are_one_baseline(tmp_path):
    """Every method's random-encoder baseline with the same encoder config is the same network at a seed: one row."""
    from cellssl.evaluation.identity import baseline_identity

    encoder = {"_target_": "cellssl.nets.MLPEncoder", "hidden_dims": [8]}
    mae = pretraining_identity(_pretraining_run(tmp_path, "a"), {**MAE, "encoder": encoder})
    byol = pretraining_identity(
        _pretraining_run(tmp_path, "b"), {"_target_": "cellssl.methods.BYOL", "encoder": encoder}
    )
    wide = pretraining_identity(_pretraining_run(tmp_path, "c"), {**MAE, "encoder": {**encoder, "hidden_dims": [16]}})
    rows = [_finetune_row(baseline_identity("random_encoder", who), "knn", "pbmc", 0, 0.2) for who in (mae, byol, wide)]
    runs = order_runs(label_runs(pd.DataFrame(rows)))
    assert runs["pretraining"].unique().tolist() == ["random encoder"]
    assert runs["pretraining_key"].nunique() == 2 and len(runs) == 2  # the two identical rows kept once


def test_a_sweep_without_baselines_is_coloured():
    """A pretraining sweep evaluated without baselines (evaluation.baselines=[]): one colour, no grey."""
    runs = pd.DataFrame({"pretraining": ["MAE random 50%", "MAE random 25%"], "method": ["mae", "mae"]})
    colours = pretraining_colours(runs)
    assert list(colours) == ["MAE random 50%", "MAE random 25%"] and len(set(colours.values())) == 2
