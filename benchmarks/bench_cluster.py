"""The same sweep on 2 dask workers x 1 thread vs 1 worker x 1 thread (target: >= 1.7x on 2 idle cores).

    python benchmarks/bench_cluster.py [--pairs 8] [--sites cross:0-7] [--steps 10]

Runs on the SD1.5-shaped 17.6M-parameter UNet of bench_interventions.py (random weights, saved and loaded through
diffprobe.load), each sweep into a fresh store, and prints both wall times and their ratio. Measure on an idle
machine: a second core busy with other work halves the gain.
"""
from __future__ import annotations

import argparse
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).parent))


def main(argv=None) -> int:
    from bench_interventions import _quiet, machine, sd_small
    from distributed import Client, LocalCluster

    from diffprobe import Experiment
    from diffprobe.bench import simple_bench
    from diffprobe.experiments import run

    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--pairs", type=int, default=8)
    parser.add_argument("--sites", default="cross:0-7")
    parser.add_argument("--steps", type=int, default=10)
    args = parser.parse_args(argv)
    _quiet()
    with tempfile.TemporaryDirectory() as tmp:
        sd_small().save_pretrained(f"{tmp}/model")
        spec = Experiment(model=f"{tmp}/model", pairs=tuple(simple_bench(args.pairs)), sites=args.sites,
                          steps=args.steps, metrics=("mse", "ssim"), batch_size=4)
        seconds = {}
        for workers in (1, 2):
            with LocalCluster(n_workers=workers, threads_per_worker=1, processes=True, dashboard_address=None) as c, \
                    Client(c) as client:
                client.submit(lambda: None).result()
                start = time.perf_counter()
                run(spec, client=client, store=f"{tmp}/store-{workers}")
                seconds[workers] = time.perf_counter() - start
    for key, value in machine().items():
        print(f"  {key}: {value}")
    print(f"1 worker x 1 thread: {seconds[1]:.1f} s; 2 workers x 1 thread: {seconds[2]:.1f} s; "
          f"speed-up {seconds[1] / seconds[2]:.2f}x (target >= 1.7x)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
