"""The trainers' run folder: :func:`atomic_dir` for exported pipelines, and the logs ``loss.csv`` (a row per step)
and ``probe.csv`` (a row per probe), appended across restarts; on --resume, the rows logged after the checkpoint
are dropped first (:func:`trim_after`)."""
from __future__ import annotations

import csv
import json
import os
import pathlib
import shutil

FILES = ("loss.csv", "probe.csv")


def atomic_dir(write, path: pathlib.Path) -> pathlib.Path:
    """``write(tmp)`` a folder next to ``path``, then swap it in: a reader sees the old folder or the new one."""
    tmp = path.with_name(path.name + ".tmp")
    if tmp.exists():
        shutil.rmtree(tmp)
    write(tmp)
    old = path.with_name(path.name + ".old")
    if path.exists():
        if old.exists():
            shutil.rmtree(old)
        os.replace(path, old)
    os.replace(tmp, path)
    if old.exists():
        shutil.rmtree(old)
    return path


def trim_after(out: pathlib.Path, step: int) -> None:
    """Drop the rows of steps after ``step`` (they were logged after the checkpoint being resumed)."""
    for name in FILES:
        fp = out / name
        if fp.exists():
            lines = fp.read_text().splitlines(keepends=True)
            fp.write_text("".join(ln for ln in lines if not ln[:1].isdigit() or int(ln.split(",")[0]) <= step))


def clear(out: pathlib.Path) -> None:
    for name in FILES:
        (out / name).unlink(missing_ok=True)


class RunLog:
    """Appends to ``out/loss.csv`` and ``out/probe.csv`` (headers written once; probe.csv's widened when a resumed
    run measures more)."""

    def __init__(self, out: pathlib.Path):
        self.loss_f = open(out / "loss.csv", "a", newline="")
        self.loss_w = csv.writer(self.loss_f)
        if self.loss_f.tell() == 0:
            self.loss_w.writerow(["step", "loss", "lr", "wall_s"])
        self.probe_f = open(out / "probe.csv", "a", newline="")
        self.probe_w = None

    def loss(self, step: int, loss: float, lr: float, wall: float) -> None:
        self.loss_w.writerow([step, f"{loss:.5f}", f"{lr:.2e}", f"{wall:.1f}"])
        if step % 25 == 0:
            self.loss_f.flush()
            print(f"step {step} loss {loss:.4f} wall {wall / 60:.1f} min", flush=True)

    def probe(self, step: int, wall: float, measured: dict) -> dict:
        """Write (and print) one probe row; returns it."""
        row = {"step": step, "wall_s": round(wall, 1), **{k: round(v, 4) for k, v in measured.items()}}
        if self.probe_w is None:
            fields = self._columns(list(row)) if self.probe_f.tell() > 0 else list(row)
            self.probe_w = csv.DictWriter(self.probe_f, fieldnames=fields, restval="")
            if self.probe_f.tell() == 0:
                self.probe_w.writeheader()
        self.probe_w.writerow(row)
        self.probe_f.flush()
        print(json.dumps(row), flush=True)
        return row

    def _columns(self, fields: list[str]) -> list[str]:
        """The columns of a probe.csv that has rows already: its own, widened by any column ``fields`` adds (a run
        resumed by a trainer that measures more than the one that began it). Widening rewrites the file: the old
        rows keep their values and are blank in the new columns; a column no longer measured stays, blank."""
        path = pathlib.Path(self.probe_f.name)
        with open(path, newline="") as f:
            reader = csv.DictReader(f)
            old, rows = list(reader.fieldnames or []), list(reader)
        merged = old + [k for k in fields if k not in old]
        if merged != old:
            self.probe_f.close()
            tmp = path.with_name(path.name + ".tmp")
            with open(tmp, "w", newline="") as f:
                w = csv.DictWriter(f, fieldnames=merged, restval="")
                w.writeheader()
                w.writerows(rows)
            os.replace(tmp, path)  # atomic: a crash leaves the old log or the widened one
            self.probe_f = open(path, "a", newline="")
        return merged

    def flush(self) -> None:
        self.loss_f.flush()

    def close(self) -> None:
        self.loss_f.close(), self.probe_f.close()
