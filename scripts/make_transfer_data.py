"""Two real data sets with different gene lists for the transfer demonstration, from pbmc68k_reduced.

Only one real, labelled single-cell data set installs offline here (scanpy's pbmc68k_reduced, 700 PBMCs), so the
demonstration uses two disjoint halves of its cells:

- ``source.h5ad``: half of the cells, all 765 genes, named by symbol (the pretraining data);
- ``target.h5ad``: the other half, named by Ensembl id only (translated with the bundled protein-coding table;
  genes it does not know are dropped), a further ``--drop`` fraction of genes removed at random, ``--extra``
  genes the source never had added (zeros), and the gene order shuffled.

Both are written as .h5ad files and as cell stores (``source.zarr``, ``target.zarr``; 70/15/15 random split),
as ``cellssl-prepare source=<file> label_columns=[bulk_labels]`` would write them.

    python scripts/make_transfer_data.py --out data/transfer
"""

from __future__ import annotations

import argparse
from pathlib import Path

import anndata as ad
import numpy as np
import pandas as pd
import scipy.sparse as sp

from cellssl.resources import bundled_path
from cellssl.store import prepare_store
from cellssl.store.sources import load_pbmc68k


def make_transfer_data(out: Path, drop: float = 0.15, extra: int = 50, seed: int = 0) -> tuple[Path, Path]:
    rng = np.random.default_rng(seed)
    adata = load_pbmc68k()
    adata.obs = adata.obs[["bulk_labels"]].copy()
    adata.var = pd.DataFrame(index=adata.var_names.astype(str))
    halves = rng.permutation(adata.n_obs)
    source = adata[np.sort(halves[: adata.n_obs // 2])].copy()
    target = adata[np.sort(halves[adata.n_obs // 2 :])].copy()

    table = pd.read_csv(bundled_path("protein_coding_genes"), sep="\t").drop_duplicates("symbol")
    ensembl_of = dict(zip(table["symbol"], table["ensembl_gene_id"], strict=True))
    known = [g for g in target.var_names if g in ensembl_of]
    kept = sorted(rng.choice(len(known), size=round(len(known) * (1 - drop)), replace=False))
    genes = [known[i] for i in kept]
    counts = target[:, genes].X
    unused = table.loc[~table["symbol"].isin(adata.var_names), "ensembl_gene_id"].to_numpy()
    extra_ids = rng.choice(unused, size=extra, replace=False)
    ids = np.array([ensembl_of[g] for g in genes] + list(extra_ids))
    counts = sp.hstack([counts, sp.csr_matrix((target.n_obs, extra), dtype=counts.dtype)], format="csr")
    order = rng.permutation(len(ids))
    target = ad.AnnData(X=counts[:, order], obs=target.obs.copy(), var=pd.DataFrame(index=ids[order]))

    out.mkdir(parents=True, exist_ok=True)
    paths = out / "source.h5ad", out / "target.h5ad"
    source.write_h5ad(paths[0])
    target.write_h5ad(paths[1])
    for path in paths:
        prepare_store(str(path), path.with_suffix(".zarr"), label_columns=["bulk_labels"], seed=seed, progress=False)
    shared = len(set(genes))
    print(
        f"source: {source.n_obs} cells x {source.n_vars} genes (symbols); target: {target.n_obs} cells x "
        f"{target.n_vars} genes (Ensembl ids, shuffled), {shared} of them in the source "
        f"({100 * shared / source.n_vars:.0f}% of its genes)"
    )
    return paths


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", type=Path, required=True)
    parser.add_argument("--drop", type=float, default=0.15, help="fraction of the shared genes removed from target")
    parser.add_argument("--extra", type=int, default=50, help="genes only the target has")
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args()
    make_transfer_data(args.out, args.drop, args.extra, args.seed)
