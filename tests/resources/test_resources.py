"""Readers of GMT gene sets and TF → target tables, on the bundled files and on files written here."""

from __future__ import annotations

import pytest

from cellssl.resources import bundled_path, read_gmt, read_regulons


def test_bundled_files_read_completely():
    assert len(read_gmt(bundled_path("hallmark"))) == 50
    assert len(read_gmt(bundled_path("reactome_wikipathways"))) == 2279
    regulons = read_regulons(bundled_path("collectri"))
    assert len(regulons) == 1055
    assert sum(len(t) for t in regulons.values()) == 32470
    assert "BAX" in regulons["ABL1"]


def test_any_gmt_path(tmp_path):
    path = tmp_path / "sets.gmt"
    path.write_text("A\tdesc\tG1\tG2\tG1\n\nB\thttp://x\tG3\t\n")
    assert read_gmt(path) == {"A": ["G1", "G2"], "B": ["G3"]}


def test_gmt_errors_name_the_file_and_line(tmp_path):
    path = tmp_path / "bad.gmt"
    path.write_text("A\tdesc\tG1\nB\n")
    with pytest.raises(ValueError, match=r"bad\.gmt:2"):
        read_gmt(path)
    with pytest.raises(FileNotFoundError, match=r"missing\.gmt"):
        read_gmt(tmp_path / "missing.gmt")


def test_any_regulon_table_and_column_names(tmp_path):
    path = tmp_path / "edges.tsv"
    path.write_text("tf\tgene\tweight\nT1\tG1\t1\nT1\tG2\t-1\nT1\tG1\t1\nT2\tT2\t1\n")
    assert read_regulons(path, source="tf", target="gene") == {"T1": ["G1", "G2"], "T2": ["T2"]}
    with pytest.raises(ValueError, match=r"missing column\(s\) \['source', 'target'\]"):
        read_regulons(path)


def test_unknown_bundled_name():
    with pytest.raises(ValueError, match="choose one of"):
        bundled_path("c8")
