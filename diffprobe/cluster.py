"""Sweeps on a dask.distributed cluster: every worker loads the model once, a stored batch is a task.

    diffprobe sweep ... --cluster local:2               # a LocalCluster of 2 worker processes, 1 thread each
    diffprobe sweep ... --cluster tcp://scheduler:8786  # an existing cluster (e.g. dask-cuda's LocalCUDACluster)

    from dask.distributed import Client
    ds = diffprobe.experiments.run(spec, client=Client("tcp://scheduler:8786"), store="runs/big")

How it stays exact and safe. The driver (this process) never loads the model: a first task asks a worker for
the layout (the sites the spec resolves to), the weights digest and the runtime, and plans every cell there, so
a bad request fails before any batch runs. Then each missing batch of the store is one task; a worker keeps its
probe in a per-process cache (:class:`ProbeLoader`, a worker plugin, loads it when the worker starts), runs the
batch exactly as the single-process runner does (same batch composition, so the same numbers), and returns the
images and metrics. The driver writes each result into the store as it arrives, atomically, as today: resume,
SIGKILL safety and the weights-digest check are unchanged, and nothing is written twice. A worker that dies
mid-batch loses only that task; the scheduler reruns it on another worker.

Why the driver writes, not the workers: a NetCDF batch file is small next to a denoising step, the store needs
no shared filesystem, and one writer keeps the store's single-writer rule. (Zarr region writes from the workers
would suit results too large to ship; diffprobe's are images and a few floats per cell.)
"""
from __future__ import annotations

from typing import Any

from .errors import SpecError

__all__ = ["DaskExecutor", "ProbeLoader", "connect"]

_PROBES: dict[tuple, Any] = {}  # per worker process: (model, device, dtype, lora) -> Probe
_PREFIXES: dict[tuple, Any] = {}  # per worker process: the same key -> the PrefixCache of that probe


def _model_key(spec) -> tuple:
    """What a worker loads for ``spec``: one probe (and one prefix cache) per key and process."""
    return (spec.model, spec.device, spec.dtype, spec.lora)


def _probe(model: str, device: str, dtype: str, lora: str | None = None):
    key = (model, device, dtype, lora)
    if key not in _PROBES:
        from .loading import load

        _PROBES[key] = load(model, device=device, dtype=dtype, lora=lora)
    return _PROBES[key]


def _quiet_worker() -> None:
    import diffusers
    import transformers

    diffusers.utils.logging.set_verbosity_error()
    diffusers.utils.logging.disable_progress_bar()
    transformers.utils.logging.set_verbosity_error()


def _threads(n: int | None) -> None:
    if n:
        import torch

        torch.set_num_threads(n)


def _prepare_task(spec_json: str, threads: int | None):
    from .runner import prepare
    from .spec import Experiment

    _quiet_worker()
    _threads(threads)
    spec = Experiment.from_json(spec_json)
    return prepare(_probe(*_model_key(spec)), spec)


def _batch_task(spec_json: str, kind: str, items: list, layout_dict: dict, sources: dict, size: int,
                threads: int | None):
    from .results import Layout
    from .runner import compute_batch
    from .spec import Experiment

    _quiet_worker()
    _threads(threads)
    spec = Experiment.from_json(spec_json)
    from .engine import PrefixCache

    key = _model_key(spec)
    probe = _probe(*key)
    cache = _PREFIXES.setdefault(key, PrefixCache())
    return compute_batch(probe, spec, kind, items, Layout.from_dict(layout_dict), sources, size, cache)


try:  # dask is optional: diffprobe[dask]
    from distributed.diagnostics.plugin import WorkerPlugin as _PluginBase
except ImportError:  # pragma: no cover - only without the extra
    _PluginBase = object


class ProbeLoader(_PluginBase):
    """A worker plugin that loads the probe once, when a worker starts (and after a restart)."""

    def __init__(self, key: tuple, threads: int | None = None):
        self.key, self.threads = key, threads
        model, device, dtype, lora = key
        self.name = f"diffprobe-probe-{model}-{device}-{dtype}" + (f"-lora-{lora}" if lora else "")

    def setup(self, worker):  # noqa: ARG002 - dask's signature
        _quiet_worker()
        _threads(self.threads)
        _probe(*self.key)


class DaskExecutor:
    """The runner's executor for a dask.distributed client: prepare on a worker, one task per missing batch."""

    def __init__(self, client, spec, threads: int | None = 1):
        self.client, self.spec_json, self.threads = client, spec.to_json(), threads
        client.register_plugin(ProbeLoader(_model_key(spec), threads))

    def prepare(self, spec):
        return self.client.submit(_prepare_task, self.spec_json, self.threads, pure=False).result()

    def map(self, spec, kind, batches: dict[int, list], layout, sources, size):
        from distributed import as_completed

        layout_dict = layout.to_dict()
        futures = {}
        for i, items in batches.items():
            need = {(c.pair, c.seed): sources[(c.pair, c.seed)] for c in items} if kind == "cell" else {}
            future = self.client.submit(_batch_task, self.spec_json, kind, items, layout_dict, need, size,
                                        self.threads, key=f"diffprobe-{spec.fingerprint()}-{kind}-{i}", pure=False)
            futures[future] = i
        for future in as_completed(futures):
            yield futures[future], future.result()


def connect(address: str):
    """A dask client for ``--cluster``: ``local:N`` (a LocalCluster of N single-threaded worker processes) or a
    scheduler address (``tcp://host:8786``)."""
    try:
        from distributed import Client, LocalCluster
    except ImportError:
        raise SpecError("--cluster needs dask's distributed scheduler: pip install 'diffprobe[dask]' "
                        "(or: pip install dask distributed).", field="cluster") from None
    if address.startswith("local:"):
        try:
            n = int(address.split(":", 1)[1])
        except ValueError:
            n = 0
        if n < 1:
            raise SpecError(f"--cluster {address!r}: write local:N with N >= 1 worker processes, e.g. local:2.",
                            field="cluster")
        return Client(LocalCluster(n_workers=n, threads_per_worker=1, processes=True, dashboard_address=None))
    if not address.startswith(("tcp://", "tls://", "ws://", "inproc://")):
        raise SpecError(f"--cluster {address!r}: give local:N or a scheduler address such as tcp://host:8786.",
                        field="cluster")
    try:
        return Client(address, timeout="20s")
    except OSError as exc:
        raise SpecError(f"--cluster {address}: cannot reach the scheduler ({exc}).", field="cluster") from None
