"""training/runlog.py: a resumed run whose trainer measures more keeps its old probe rows."""
from __future__ import annotations

import csv

from training import runlog


def rows(path):
    with open(path, newline="") as f:
        reader = csv.DictReader(f)
        return reader.fieldnames, list(reader)


def test_a_new_probe_column_widens_the_header_and_keeps_the_old_rows(tmp_path):
    log = runlog.RunLog(tmp_path)
    log.probe(100, 10.0, {"nn_acc": 0.5, "word_effect": 0.02})
    log.close()
    log = runlog.RunLog(tmp_path)  # resumed by a trainer that also measures single letters
    log.probe(200, 20.0, {"nn_acc": 0.25, "word_effect": 0.03, "single_letter_acc": 0.125})
    log.probe(300, 30.0, {"nn_acc": 0.75, "word_effect": 0.04, "single_letter_acc": 0.5})
    log.close()
    fields, got = rows(tmp_path / "probe.csv")
    assert fields == ["step", "wall_s", "nn_acc", "word_effect", "single_letter_acc"]
    assert [(r["step"], r["nn_acc"], r["single_letter_acc"]) for r in got] == \
        [("100", "0.5", ""), ("200", "0.25", "0.125"), ("300", "0.75", "0.5")]
    assert not (tmp_path / "probe.csv.tmp").exists()


def test_a_column_no_longer_measured_stays_blank(tmp_path):
    log = runlog.RunLog(tmp_path)
    log.probe(100, 10.0, {"nn_acc": 0.5, "single_letter_acc": 0.125})
    log.close()
    log = runlog.RunLog(tmp_path)
    log.probe(200, 20.0, {"nn_acc": 0.25})
    log.close()
    fields, got = rows(tmp_path / "probe.csv")
    assert fields == ["step", "wall_s", "nn_acc", "single_letter_acc"]
    assert [(r["step"], r["single_letter_acc"]) for r in got] == [("100", "0.125"), ("200", "")]
