"""Checkpoints of the paper's released code (Richter et al. 2024, ``github.com/theislab/ssl_in_scg``, MIT) as
cellssl checkpoints.

Their modules (``self_supervision/models/lightning_modules/cellnet_autoencoder.py``) map onto cellssl's:

==================  =====================================================================================
``MLPAutoEncoder``  :class:`~cellssl.methods.MaskedAutoencoder`, ``mse``; its decoder's output activation
                    (``Sigmoid``, the released code's default) after the output layer
``MLPNegBin``       :class:`~cellssl.methods.MaskedAutoencoder`, ``nb_log1p``: mean ``softplus(decoder)`` of the
                    log-normalised values (the unused second half of their ``2 × genes`` output layer dropped),
                    dispersion ``exp(px_r)``
``MLPBYOL``         :class:`~cellssl.methods.BYOL`; BYOL reads their encoder at ``hidden_layer=-2`` (the last
                    hidden layer, after its activation), so that is the embedding and the encoder's final linear
                    layer, which BYOL never trains, is left out
``MLPBarlowTwins``  :class:`~cellssl.methods.BarlowTwins` (also their ``save_model`` files: the bare
                    ``BarlowTwins`` state dict); their bias-free projector layers get zero biases
``MLPClassifier``   :class:`~cellssl.methods.SupervisedClassifier`: embedding = their ``forward_embedding``
                    (the last hidden layer after its ReLU), head = their last linear layer
==================  =====================================================================================

Their encoders are ``Linear → activation → Dropout`` per hidden layer, no norm layer (cellssl's MLP with
``norm="none"``), SELU in the self-supervised modules and ReLU in the classifier. Their inputs are the scTab
store's values, ``log1p(counts / total × 10,000)``, which is cellssl's normalisation with ``target_sum=10000``;
nothing is masked at inference. The architecture is read from the weights' shapes; the activations from the
checkpoint's ``hyper_parameters`` where saved (only ``MLPBarlowTwins`` saves them), else the released code's
defaults, and either can be overridden.
"""

from __future__ import annotations

import hashlib
import pickle
import re
import zipfile
from collections.abc import Callable
from pathlib import Path
from typing import Any

import torch
from torch import Tensor

from cellssl.methods.base import build_model
from cellssl.store import InputError
from cellssl.store.vocabulary import GeneTable

TARGET_SUM = 10_000.0  # scTab's store (merlin_cxg_2023_05_15_sf-log1p): size factors to 10,000, then log1p
FIX_FILE = "pass a .ckpt of ssl_in_scg (a Lightning checkpoint or a saved state dict)"
# classes their hyper_parameters pickle (activation, optimizer and scheduler classes) that may be unpickled
_SAFE_MODULES = ("torch.nn.modules.activation", "torch.optim")

State = dict[str, Tensor]


def import_ssl_in_scg(
    checkpoint: str | Path,
    genes: GeneTable,
    genes_source: str = "genes",
    activation: str | None = None,
    output_activation: str | None = None,
    class_names: list[str] | None = None,
    classes_source: str = "classes",
) -> dict[str, Any]:
    """The cellssl checkpoint (a dict for ``torch.save``) of an ``ssl_in_scg`` checkpoint.

    ``genes``: the model's input genes in order (their ``var.parquet``); ``activation`` / ``output_activation``
    override the hidden and decoder-output activations (None: saved hyper-parameters, else their defaults);
    ``class_names``: a classifier's classes in output order (their ``categorical_lookup/cell_type.parquet``);
    ``genes_source`` / ``classes_source`` name the files they came from in error messages.
    Raises :class:`~cellssl.store.InputError` for a file that is not one of their layouts or genes that do not
    fit it. The model is rebuilt from the result and its weights loaded strictly before it is returned.
    """
    path = str(checkpoint)
    state, hparams = read_checkpoint(path)
    module = detect_module(state, path)
    activation = activation or _activation_name(hparams.get("activation")) or DEFAULT_ACTIVATION[module]
    converted = CONVERTERS[module](state, hparams, activation, output_activation, path)
    config, weights, n_genes = converted
    config = {"target_sum": TARGET_SUM, **config}
    if len(genes.symbols) != n_genes:
        raise InputError(
            genes_source,
            "genes",
            f"{len(genes.symbols)} genes, but {Path(path).name} takes {n_genes} inputs",
            "give the var.parquet (gene list) of the data set the model was trained on, in its order",
        )
    context = _context(genes, n_genes, weights, class_names, classes_source)
    model = build_model(config, context)
    try:
        model.load_state_dict(weights, strict=True)
    except RuntimeError as err:
        problem = str(err).splitlines()[0]
        raise InputError(path, "state_dict", f"does not fit {module}: {problem}", FIX_FILE) from err
    provenance = {"source": "ssl_in_scg", "module": module, "checkpoint": str(Path(path).absolute())}
    provenance["sha256"] = hashlib.sha256(Path(path).read_bytes()).hexdigest()
    meta = {"model_config": model.model_config, "data_context": model.data_context, "imported_from": provenance}
    return {"state_dict": model.state_dict(), "cellssl": meta}


def read_checkpoint(path: str) -> tuple[State, dict[str, Any]]:
    """The weights and saved hyper-parameters of a Lightning checkpoint, or a bare state dict's weights.

    Loaded with ``weights_only=True``; classes their hyper-parameters name (activations, optimisers) are allowed,
    anything else is refused (a checkpoint is a pickle: unpickling arbitrary objects runs code).
    """
    if not Path(path).is_file():
        raise InputError(path, "checkpoint", "no such file", FIX_FILE)
    try:
        loaded = _load(path)
    except InputError:
        raise
    except (RuntimeError, EOFError, ValueError, pickle.UnpicklingError, zipfile.BadZipFile, OSError) as err:
        raise InputError(path, "checkpoint", f"unreadable ({type(err).__name__})", FIX_FILE) from err
    if not isinstance(loaded, dict):
        raise InputError(path, "checkpoint", f"holds a {type(loaded).__name__}, not a dict", FIX_FILE)
    state = loaded.get("state_dict", loaded)
    hparams = loaded.get("hyper_parameters") or {}
    tensors = {k: v for k, v in state.items() if isinstance(v, Tensor)} if isinstance(state, dict) else {}
    if not tensors:
        raise InputError(path, "state_dict", "no weights found", FIX_FILE)
    return tensors, dict(hparams)


def _load(path: str) -> Any:
    try:
        return torch.load(path, map_location="cpu", weights_only=True)
    except pickle.UnpicklingError:
        needed = torch.serialization.get_unsafe_globals_in_checkpoint(path)
    allowed = {name: _safe_class(name) for name in needed}
    refused = [name for name, cls in allowed.items() if cls is None]
    if refused:
        raise InputError(
            path,
            "hyper_parameters",
            f"pickle {', '.join(refused[:3])}, which is not unpickled (it could run code)",
            "re-save the weights alone: torch.save({'state_dict': ckpt['state_dict']}, 'weights.ckpt')",
        )
    with torch.serialization.safe_globals(list(allowed.values())):
        return torch.load(path, map_location="cpu", weights_only=True)


def _safe_class(name: str) -> type | None:
    """The class ``name`` (``torch.nn.modules.activation.SELU``) when it is an activation or optimiser class."""
    module, _, attribute = name.rpartition(".")
    if not any(module == m or module.startswith(f"{m}.") for m in _SAFE_MODULES):
        return None
    import importlib

    value = getattr(importlib.import_module(module), attribute, None)
    return value if isinstance(value, type) else None


def _activation_name(value: Any) -> str | None:
    """``nn.SELU`` (or its repr / dotted name, as hyper-parameter files may hold it) → ``"SELU"``."""
    if value is None:
        return None
    name = getattr(value, "__name__", None) or re.sub(r"[^\w.].*$", "", str(value).removeprefix("<class '"))
    return name.rsplit(".", 1)[-1] or None


def detect_module(state: State, path: str) -> str:
    """Which of their modules wrote ``state`` (by its parameter names)."""
    if "encoder.0.weight" in state and "px_r" in state:
        return "MLPNegBin"
    if "encoder.0.weight" in state and "decoder.0.0.weight" in state:
        return "MLPAutoEncoder"
    if "classifier.0.weight" in state:
        return "MLPClassifier"
    if "byol.online_encoder.net.0.weight" in state:
        return "MLPBYOL"
    if "barlow_twins.backbone.0.weight" in state or "backbone.0.weight" in state:
        return "MLPBarlowTwins"
    shown = ", ".join(list(state)[:4])
    raise InputError(
        path,
        "state_dict",
        f"not a layout of ssl_in_scg's MLPAutoEncoder, MLPNegBin, MLPBYOL, MLPBarlowTwins or MLPClassifier "
        f"(parameters {shown}, ...)",
        FIX_FILE,
    )


DEFAULT_ACTIVATION = {
    "MLPAutoEncoder": "SELU",
    "MLPNegBin": "SELU",
    "MLPBYOL": "SELU",
    "MLPBarlowTwins": "SELU",
    "MLPClassifier": "ReLU",  # their MLP's default; the classifier does not pass one
}


def linear_stack(state: State, prefix: str, path: str, step: int = 3) -> list[tuple[Tensor, Tensor | None]]:
    """The (weight, bias) of the linear layers ``{prefix}{i}`` of a ``Sequential``, in order.

    Their MLP has a linear layer every ``step`` = 3 modules (Linear, activation, Dropout); another spacing means
    norm layers, which the released models do not have.
    """
    pattern = re.compile(rf"^{re.escape(prefix)}(\d+)\.weight$")
    indices = sorted(int(m.group(1)) for key in state if (m := pattern.match(key)) and state[key].dim() == 2)
    if not indices or indices != list(range(0, step * len(indices), step)):
        found = ", ".join(map(str, indices)) or "none"
        raise InputError(
            path,
            f"state_dict.{prefix}*",
            f"linear layers at positions {found}, not every {step} (Linear, activation, Dropout: no norm layers)",
            FIX_FILE,
        )
    return [(state[f"{prefix}{i}.weight"], state.get(f"{prefix}{i}.bias")) for i in indices]


def _dims(layers: list[tuple[Tensor, Tensor | None]]) -> list[int]:
    return [int(layers[0][0].shape[1]), *(int(w.shape[0]) for w, _ in layers)]


def encoder_config(dims: list[int], activation: str, dropout: float, output_activation: str | None = None) -> dict:
    """cellssl's MLP encoder with the layer widths ``dims`` (inputs first) and their layout (no norm layer)."""
    return {
        "_target_": "cellssl.nets.MLPEncoder",
        "_partial_": True,
        "hidden_dims": dims[1:-1],
        "embedding_dim": dims[-1],
        "dropout": dropout,
        "activation": activation,
        "norm": "none",
        "output_activation": output_activation,
    }


def _put_linears(weights: State, prefix: str, layers: list[tuple[Tensor, Tensor | None]], step: int = 3) -> None:
    """Their linear layers as cellssl MLP layers ``{prefix}{step × j}`` (a missing bias is a zero bias)."""
    for j, (weight, bias) in enumerate(layers):
        weights[f"{prefix}{step * j}.weight"] = weight
        weights[f"{prefix}{step * j}.bias"] = torch.zeros(weight.shape[0]) if bias is None else bias


def _autoencoder(state: State, hparams: dict, activation: str, output_activation: str | None, path: str):
    encoder = linear_stack(state, "encoder.", path)
    decoder = linear_stack(state, "decoder.0.", path)
    n_genes = int(encoder[0][0].shape[1])
    negbin = "px_r" in state
    if negbin:  # output: [mean | dispersion] per gene for nb, + dropout logits for zinb; only the mean is used
        width = int(decoder[-1][0].shape[0])
        if width != 2 * n_genes:
            likelihood = "zinb" if width == 3 * n_genes else f"{width} outputs"
            raise InputError(path, "decoder", f"{likelihood}: only gene_likelihood='nb' is imported", FIX_FILE)
        weight, bias = decoder[-1]
        decoder[-1] = (weight[:n_genes], None if bias is None else bias[:n_genes])
    if int(decoder[-1][0].shape[0]) != n_genes:
        raise InputError(path, "decoder", f"outputs {decoder[-1][0].shape[0]} genes, inputs {n_genes}", FIX_FILE)
    dropout = float(hparams.get("dropout", 0.1))  # dropout only matters for further training; 0.1: their scripts'
    config = {
        "_target_": "cellssl.methods.MaskedAutoencoder",
        "reconstruction_loss": "nb_log1p" if negbin else "mse",
        "encoder": encoder_config(_dims(encoder), activation, dropout),
        "decoder_hidden_dims": _dims(decoder)[1:-1],
        "decoder_output_activation": output_activation or ("Softplus" if negbin else "Sigmoid"),
        "masking": {"_target_": "cellssl.masking.RandomMasking", "rate": float(hparams.get("masking_rate") or 0.5)},
    }
    weights: State = {}
    _put_linears(weights, "encoder.", encoder)
    _put_linears(weights, "decoder.", decoder)
    if negbin:
        weights["log_dispersion"] = state["px_r"]
    return config, weights, n_genes


def _classifier(state: State, hparams: dict, activation: str, output_activation: str | None, path: str):
    layers = linear_stack(state, "classifier.", path)
    if len(layers) < 2:
        raise InputError(path, "classifier", "a single linear layer: no embedding to import", FIX_FILE)
    dims = _dims(layers)
    config = {
        "_target_": "cellssl.methods.SupervisedClassifier",
        "encoder": encoder_config(dims[:-1], activation, float(hparams.get("dropout", 0.1)), activation),
    }
    weights: State = {}
    _put_linears(weights, "encoder.", layers[:-1])
    weights["head.weight"], weights["head.bias"] = layers[-1]
    weights["class_weights"] = state.get("class_weights", torch.ones(dims[-1])).float()
    return config, weights, dims[0]


def projector_config(layers: list[tuple[Tensor, Tensor | None]]) -> dict:
    """cellssl's MLP projector (BatchNorm, ReLU, no dropout) with the layer widths of ``layers``."""
    dims = _dims(layers)
    return {
        "_target_": "cellssl.nets.MLP",
        "_partial_": True,
        "hidden_dims": dims[1:-1],
        "out_dim": dims[-1],
        "dropout": 0.0,
        "activation": "ReLU",
        "norm": "batch",
    }


def _put_projector(weights: State, state: State, theirs: str, ours: str, path: str, statistics: bool) -> list:
    """Their ``Linear → BatchNorm → ReLU`` stack (a linear layer every 3 modules) as cellssl's MLP (every 4)."""
    layers = linear_stack(state, theirs, path)
    _put_linears(weights, ours, layers, step=4)
    buffers = ("running_mean", "running_var", "num_batches_tracked") if statistics else ()
    for j in range(len(layers) - 1):
        for name in ("weight", "bias", *buffers):
            weights[f"{ours}{4 * j + 1}.{name}"] = state[f"{theirs}{3 * j + 1}.{name}"]
    return layers


def _byol(state: State, hparams: dict, activation: str, output_activation: str | None, path: str):
    if "byol.target_encoder.net.0.weight" not in state:
        raise InputError(path, "byol.target_encoder", "missing: SimSiam (use_momentum=False) is not imported", FIX_FILE)
    online = linear_stack(state, "byol.online_encoder.net.", path)[:-1]  # BYOL never trains the last layer
    target = linear_stack(state, "byol.target_encoder.net.", path)[:-1]
    if not online:
        raise InputError(path, "byol.online_encoder.net", "a single linear layer: no hidden layer", FIX_FILE)
    weights: State = {}
    _put_linears(weights, "encoder.", online)
    _put_linears(weights, "target_encoder.", target)
    projector = _put_projector(weights, state, "byol.online_encoder.projector.", "projector.", path, True)
    predictor = _put_projector(weights, state, "byol.online_predictor.", "predictor.", path, True)
    _put_projector(weights, state, "byol.target_encoder.projector.", "target_projector.", path, False)
    dropout = float(hparams.get("dropout", 0.1))
    config = {
        "_target_": "cellssl.methods.BYOL",
        "encoder": encoder_config(_dims(online), activation, dropout, activation),
        "projector": projector_config(projector),
        "predictor": projector_config(predictor),
        "augmentation": _augmentation(hparams),
        "ema_decay": 0.99,
    }
    return config, weights, int(online[0][0].shape[1])


def _barlow_twins(state: State, hparams: dict, activation: str, output_activation: str | None, path: str):
    prefix = "barlow_twins." if "barlow_twins.backbone.0.weight" in state else ""
    backbone = linear_stack(state, f"{prefix}backbone.", path)
    weights: State = {}
    _put_linears(weights, "encoder.", backbone)
    projector = _put_projector(weights, state, f"{prefix}projector.", "projector.", path, True)
    config = {
        "_target_": "cellssl.methods.BarlowTwins",
        "encoder": encoder_config(_dims(backbone), activation, float(hparams.get("dropout", 0.0))),
        "projector": projector_config(projector),
        "redundancy_weight": float(hparams.get("lambd", 0.0051)),
        "augmentation": _augmentation(hparams),
    }
    return config, weights, int(backbone[0][0].shape[1])


def _augmentation(hparams: dict) -> dict:
    """Their augmentations (negative-binomial noise, then dropout, each with probability ``p``; Barlow Twins
    always applies them) in cellssl's terms, for further training; embeddings do not depend on them."""
    p = float(hparams.get("p", 1.0 if "lambd" in hparams else 0.5))
    return {
        "_target_": "cellssl.augment.Compose",
        "transforms": [
            {
                "_target_": "cellssl.augment.NegativeBinomialCountNoise",
                "intensity": float(hparams.get("negbin_intensity", 0.1)),
                "p": p,
            },
            {"_target_": "cellssl.augment.Dropout", "rate": float(hparams.get("dropout_intensity", 0.1)), "p": p},
        ],
    }


def _context(genes: GeneTable, n_genes: int, weights: State, class_names: list[str] | None, classes: str) -> dict:
    """The data context a cellssl checkpoint stores: the gene vocabulary and, for a classifier, its classes."""
    context: dict[str, Any] = {"n_genes": n_genes, "gene_names": [str(s) for s in genes.symbols]}
    if genes.ensembl_ids is not None:
        context["gene_ids"] = [str(i) for i in genes.ensembl_ids]
    n_classes = int(weights["head.weight"].shape[0]) if "head.weight" in weights else None
    if class_names is not None and n_classes is None:
        raise InputError(classes, "classes", "given, but the checkpoint has no classifier", "leave classes=null")
    if class_names is not None and len(class_names) != n_classes:
        problem = f"{len(class_names)} names for the classifier's {n_classes} outputs"
        raise InputError(classes, "classes", problem, "give its categorical_lookup/cell_type.parquet")
    if n_classes is not None:
        context["n_classes"] = n_classes
        if class_names is not None:
            context["class_names"] = [str(c) for c in class_names]
    return context


def read_class_names(path: str | Path) -> list[str]:
    """Class names in output order: their ``categorical_lookup/cell_type.parquet`` (first column), or one name a
    line."""
    path = Path(path)
    if not path.is_file():
        raise InputError(str(path), "classes", "no such file", "give categorical_lookup/cell_type.parquet")
    if path.suffix == ".parquet":
        import pandas as pd

        table = pd.read_parquet(path)
        return [str(v) for v in table.iloc[:, 0]] if table.shape[1] else [str(v) for v in table.index]
    return [line.strip() for line in path.read_text().splitlines() if line.strip()]


CONVERTERS: dict[str, Callable[..., tuple[dict, State, int]]] = {
    "MLPAutoEncoder": _autoencoder,
    "MLPNegBin": _autoencoder,
    "MLPClassifier": _classifier,
    "MLPBYOL": _byol,
    "MLPBarlowTwins": _barlow_twins,
}
