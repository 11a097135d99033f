"""What a result is: the pretraining behind a checkpoint (experiment, ``model=`` name, masking, checkpoint path)
and the short names a table, a figure or a UMAP title gives it.

The identity comes from the checkpoint's own model config (``checkpoint["cellssl"]["model_config"]``, what
``cellssl.load(ckpt).module.model_config`` holds) and, when the checkpoint still lies in its run directory, from
the Hydra choices that run recorded (``<run dir>/.hydra/hydra.yaml``: ``experiment=``, ``model=``). Two
checkpoints are two pretrainings even when they share a method; only seeds of one checkpoint are grouped.
"""

from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path
from typing import TYPE_CHECKING, Any

from omegaconf import OmegaConf

if TYPE_CHECKING:
    from cellssl.model import CellSSLModel

FROM_SCRATCH = "from scratch"
# the ``model=`` config of each method class (tests/evaluation/test_report.py checks conf/model/ agrees)
MODEL_NAMES = {
    "MaskedAutoencoder": "mae",
    "BYOL": "byol",
    "BarlowTwins": "barlow_twins",
    "SimCLR": "simclr",
    "VICReg": "vicreg",
    "SupervisedClassifier": "supervised",
    "FineTuneClassifier": "finetuned",
}
# how a method is written in a label; ``mae_programme`` and the like fall back to their first word
DISPLAY_NAMES = {
    "mae": "MAE",
    "byol": "BYOL",
    "barlow_twins": "Barlow Twins",
    "simclr": "SimCLR",
    "vicreg": "VICReg",
    "supervised": "supervised",
    "finetuned": "fine-tuned",
    "scratch": FROM_SCRATCH,
    "random_encoder": "random encoder",
    "pca": "PCA",
    "log_normalised": "log-normalised genes",
    "scvi": "scVI",
}
# results that are not a pretraining: training from scratch and the zero-shot baselines, in the order shown
BASELINE_METHODS = ("scratch", "random_encoder", "pca", "log_normalised", "scvi")
MODE_NAMES = {"full": "full", "frozen": "frozen", "linear_probe": "linear probe", "knn": "kNN zero-shot"}
IDENTITY_KEYS = ("experiment", "method", "masking", "checkpoint", "pretrain_run", "recipe")


def run_directory(checkpoint: str | Path) -> Path:
    """The run directory of a checkpoint (``<run dir>/checkpoints/last.ckpt``; else the file's folder)."""
    folder = Path(checkpoint).parent
    return folder.parent if folder.name == "checkpoints" else folder


def hydra_choices(run_dir: Path) -> dict[str, Any]:
    """The config-group choices Hydra recorded for a run (``.hydra/hydra.yaml``); empty when there are none."""
    path = run_dir / ".hydra" / "hydra.yaml"
    if not path.is_file():
        return {}
    try:
        choices = OmegaConf.select(OmegaConf.load(path), "hydra.runtime.choices", default=None)
    except Exception:  # an unreadable file only loses the names, never the report
        return {}
    return dict(OmegaConf.to_container(choices)) if choices is not None else {}


def _digest(value: Any) -> str:
    import hashlib
    import json

    return hashlib.sha1(json.dumps(value, sort_keys=True, default=str).encode()).hexdigest()[:12]


def recipe_key(run_dir: Path) -> str:
    """12 hex digits naming a run's recipe: its composed config (``.hydra/config.yaml``) without the seed, the
    output paths, the loggers and tags. Checkpoints of one recipe trained with different seeds share it (a report
    groups them as seeds); ``""`` when the run recorded no config (each checkpoint is then its own pretraining)."""
    path = run_dir / ".hydra" / "config.yaml"
    if not path.is_file():
        return ""
    try:
        config = OmegaConf.to_container(OmegaConf.load(path))
    except Exception:  # an unreadable file: no evidence that two checkpoints share a recipe
        return ""
    return _digest(
        {k: v for k, v in config.items() if k not in ("seed", "paths", "logger", "tags", "ckpt_path", "task_name")}
    )


def masking_description(masking: Mapping[str, Any] | None) -> str:
    """A masking config in words: ``random 50%``, ``programme 25%``, ``programme → TF``; ``""`` for none."""
    if not masking or "_target_" not in masking:
        return ""
    kind = str(masking["_target_"]).rsplit(".", 1)[-1]
    rate = masking.get("rate")
    named = {"RandomMasking": "random", "GeneProgrammeMasking": "programme"}
    pairs = {"ProgrammeToProgrammeMasking": "programme → programme", "ProgrammeToTFMasking": "programme → TF"}
    if kind in pairs:
        return pairs[kind]
    name = named.get(kind, kind.removesuffix("Masking").lower())
    return f"{name} {float(rate):.0%}" if isinstance(rate, int | float) else name


def pretraining_identity(checkpoint: str | Path | None, model_config: Mapping[str, Any] | None) -> dict[str, str]:
    """Experiment, method (``model=`` name), masking, checkpoint path and run directory of a pretraining;
    ``checkpoint=None`` (``pretrained=null``) is training from scratch."""
    if checkpoint is None:
        empty = {"experiment": "", "masking": "", "pretrain_run": "", "recipe": ""}
        return {**empty, "method": "scratch", "checkpoint": FROM_SCRATCH}
    path = Path(checkpoint).absolute()
    run_dir = run_directory(path)
    choices = hydra_choices(run_dir)
    config = dict(model_config or {})
    kind = str(config.get("_target_", "")).rsplit(".", 1)[-1]
    return {
        "experiment": str(choices.get("experiment") or ""),
        "method": str(choices.get("model") or MODEL_NAMES.get(kind) or kind.lower() or "unknown"),
        # the NB head is another objective under the same masking: said beside it
        "masking": masking_description(config.get("masking"))
        + (", NB loss" if config.get("reconstruction_loss") in ("nb", "nb_log1p") else ""),
        "checkpoint": str(path),
        "pretrain_run": str(run_dir),
        "recipe": recipe_key(run_dir),
        # the random-encoder baseline depends only on the architecture (and the seed): the same for every method
        "encoder_recipe": _digest(config.get("encoder")),
    }


def model_identity(model: CellSSLModel) -> dict[str, str]:
    """:func:`pretraining_identity` of a loaded model (``cellssl.load``)."""
    return pretraining_identity(model.checkpoint, model.module.model_config)


def baseline_identity(representation: str, encoder: Mapping[str, str] | None) -> dict[str, str]:
    """The identity of a zero-shot baseline scored beside ``encoder``: the random encoder is named by the
    architecture it copies (``encoder_recipe``), so the random encoders of methods sharing one are one baseline;
    PCA and the log-normalised genes depend on no checkpoint."""
    keep = representation == "random_encoder" and encoder
    return {
        "experiment": "",
        "method": representation,
        "masking": "",
        "checkpoint": "",
        "pretrain_run": "",
        "recipe": encoder.get("encoder_recipe", "") if keep else "",
    }


def method_display(method: str) -> str:
    """``mae`` → ``MAE``, ``mae_programme`` → ``MAE``, ``barlow_twins`` → ``Barlow Twins``, ``pca`` → ``PCA``."""
    return DISPLAY_NAMES.get(method) or DISPLAY_NAMES.get(method.split("_")[0]) or method.replace("_", " ")


def pretraining_name(identity: Mapping[str, Any]) -> str:
    """The short name of a pretraining: ``MAE random 50%``, ``BYOL``, ``from scratch``, ``PCA``."""
    if identity.get("checkpoint") == FROM_SCRATCH:
        return FROM_SCRATCH
    masking = identity.get("masking") or ""
    return " ".join(part for part in (method_display(str(identity.get("method") or "")), masking) if part)


def mode_name(mode: str) -> str:
    """``linear_probe`` → ``linear probe``, ``knn`` → ``kNN zero-shot``."""
    return MODE_NAMES.get(mode, mode.replace("_", " "))


def run_label(identity: Mapping[str, Any], mode: str) -> str:
    """``MAE random 50% · linear probe``: what was pretrained and how it was read out."""
    return f"{pretraining_name(identity)} · {mode_name(mode)}"


def checkpoint_title(model: CellSSLModel) -> str:
    """``MAE random 50% — <run dir>/checkpoints/last.ckpt``: the model and the checkpoint it came from."""
    identity = model_identity(model)
    path = Path(identity["checkpoint"])
    shown = path.relative_to(run_directory(path).parent)
    return f"{pretraining_name(identity)} — {shown}"
