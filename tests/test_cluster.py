"""Sweeps on a dask LocalCluster of 2 worker processes: the same dataset as one process, also when a worker dies."""
from __future__ import annotations

import os
import signal
import threading
import time

import numpy as np
import pytest

from diffprobe import Experiment
from diffprobe.bench import PromptPair
from diffprobe.experiments import run

distributed = pytest.importorskip("distributed", reason="dask.distributed is installed by make test (diffprobe[dask])")

PAIRS = tuple(PromptPair(f'A sign that says "{a}".', f'A sign that says "{b}".', a, b)
              for a, b in (("STOP", "GO"), ("CAT", "DOG"), ("SUN", "MOON")))


@pytest.fixture(scope="module")
def client():
    from distributed import Client, LocalCluster

    cluster = LocalCluster(n_workers=2, threads_per_worker=1, processes=True, dashboard_address=None)
    with Client(cluster) as c:
        yield c
    cluster.close()


def _spec(model: str) -> Experiment:
    return Experiment(model=model, pairs=PAIRS, sites="cross:0-3", steps=2, metrics=("mse", "ssim"), batch_size=3)


def _same(a, b) -> None:
    for name in ("mse", "ssim", "patched_image", "source_image", "target_image", "done"):
        np.testing.assert_array_equal(a[name].values, b[name].values, err_msg=name)
    assert list(a.site_label.values) == list(b.site_label.values)


def test_a_cluster_sweep_equals_the_single_process_sweep(client, tiny_dirs, tmp_path):
    spec = _spec(str(tiny_dirs("sd15")))
    alone = run(spec, store=tmp_path / "alone")
    spread = run(spec, client=client, store=tmp_path / "spread")
    _same(alone, spread)
    assert sorted(p.name for p in (tmp_path / "spread" / "batches").iterdir()) == sorted(
        p.name for p in (tmp_path / "alone" / "batches").iterdir())


def test_a_killed_worker_loses_only_its_batch(client, tiny_dirs, tmp_path):
    spec = _spec(str(tiny_dirs("sd15")))
    alone = run(spec, store=tmp_path / "alone")
    pids = list(client.run(os.getpid).values())
    store = tmp_path / "spread"

    def kill_when_a_batch_lands():
        deadline = time.time() + 300
        while time.time() < deadline and not list(store.glob("batches/cell-*.nc")):
            time.sleep(0.05)
        os.kill(pids[0], signal.SIGKILL)  # the nanny starts a new worker; its task reruns elsewhere

    killer = threading.Thread(target=kill_when_a_batch_lands, daemon=True)
    killer.start()
    spread = run(spec, client=client, store=store)
    killer.join()
    _same(alone, spread)
    assert not list(store.glob("batches/*.tmp"))


def test_cluster_option_errors(tmp_path):
    from typer.testing import CliRunner

    from diffprobe.cli import app

    result = CliRunner().invoke(app, ["sweep", "--bench", "simple", "--n", "1", "--cluster", "local:0",
                                      "--out", str(tmp_path)])
    assert result.exit_code == 2 and "--cluster:" in result.output and "local:N" in result.output
