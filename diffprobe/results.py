"""Results: the dataset layout and the resumable store (the ``ds.dp`` accessor is :mod:`diffprobe.accessor`).

Layout of an experiment dataset (one vocabulary with the rest of diffprobe):

- dims ``pair``, ``site`` (or ``n_sites`` for cumulative sweeps), ``t_start``, ``seed``
  (and ``head`` for per-head sweeps), plus image dims ``y``, ``x``, ``rgb``;
- coords ``site_name``/``site_kind``/``site_label`` on ``site`` (``sites_used`` on ``n_sites``),
  ``source_prompt``/``target_prompt``/``source_text``/``target_text`` on ``pair``;
- one float variable per metric on the cell grid, ``ocr_text`` (str) and ``done`` (bool);
- ``moved_target`` on the cell grid in every dataset, derived from the stored images (not a spec metric,
  so adding it changed no fingerprint): how far each image moved from the unpatched source image towards
  the unpatched target image (:func:`diffprobe.metrics.image.moved`), with ``baseline_moved_target``;
- ``patched_image`` (cell grid + y, x, rgb), ``source_image``/``target_image`` (pair, seed, y, x, rgb),
  ``source_ocr_text``/``target_ocr_text`` and ``baseline_<metric>`` (role, pair, seed);
- attrs ``spec`` (JSON), ``fingerprint``, ``versions`` (JSON), ``model``, ``intervention`` (JSON),
  ``layout`` (JSON: the resolved sites and groups).

The store is a directory: ``spec.json`` (the spec, its fingerprint, the weights digest and the
:class:`Layout`: the sites the spec resolved to on the model, so a store reopens without loading the
model), one NetCDF file per finished batch under ``batches/`` (written to a temporary name and
renamed, so a kill at any moment leaves only whole files; temporary files left by a kill are removed
when the store is next opened: one writer per store), and ``results.nc``, the assembled dataset,
rewritten atomically at the end of each run.

This module knows the spec (:mod:`diffprobe.spec`) and the site type; it never loads a model and
never runs one (that is :mod:`diffprobe.experiments`).
"""
from __future__ import annotations

import json
import os
import shutil
import tempfile
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import xarray as xr

from .errors import ResultsError
from .sites import Site

__all__ = ["Layout", "Store", "add_derived", "assemble", "check_out", "open_results", "share_baselines", "versions"]

ENGINE = "h5netcdf"


@dataclass(frozen=True)
class Layout:
    """The sites a spec resolved to on a model, and the site positions each group patches together."""

    sites: tuple[Site, ...]
    groups: tuple[tuple[int, ...], ...]

    def group_sites(self, group: int) -> list[Site]:
        return [self.sites[i] for i in self.groups[group]]

    def to_dict(self) -> dict:
        return {"sites": [s.to_dict() for s in self.sites], "groups": [list(g) for g in self.groups]}

    @classmethod
    def from_dict(cls, data: dict) -> "Layout":
        sites = tuple(Site(**{**s, "kv": tuple(s["kv"])}) for s in data["sites"])
        return cls(sites, tuple(tuple(int(i) for i in g) for g in data["groups"]))


def versions() -> dict[str, str]:
    from importlib.metadata import PackageNotFoundError, version

    out = {}
    for pkg in ("diffprobe", "torch", "diffusers", "nnsight", "transformers", "xarray"):
        try:
            out[pkg] = version(pkg)
        except PackageNotFoundError:
            out[pkg] = "not installed"
    return out


def _atomic_netcdf(ds: xr.Dataset, path: Path) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=path.name + ".", suffix=".tmp", dir=path.parent)
    os.close(fd)
    try:
        ds.to_netcdf(tmp, engine=ENGINE)
        os.replace(tmp, path)
    except OSError as exc:
        raise ResultsError(f"cannot write {path} ({exc.strerror or exc}); check free disk space and permissions. "
                           "Finished batches are kept: rerun to resume.", field="out") from None
    finally:
        if os.path.exists(tmp):
            os.unlink(tmp)


def _open(path: Path) -> xr.Dataset:
    try:
        with xr.open_dataset(path, engine=ENGINE) as ds:
            return ds.load()
    except Exception as exc:  # h5py/netCDF raise many types for a damaged file
        raise ResultsError(
            f"The results file {path} is corrupted or not a diffprobe store ({type(exc).__name__}: {exc}). "
            "Delete it and re-run the same spec: finished batches are kept and only this one is recomputed."
        ) from None


def _spec_diff(old: dict, new: dict) -> str:
    keys = sorted(set(old) | set(new))
    diffs = [k for k in keys if old.get(k) != new.get(k)]
    parts = []
    for k in diffs[:5]:
        a, b = old.get(k), new.get(k)
        if k == "pairs":
            parts.append(f"pairs ({len(a or [])} stored vs {len(b or [])} asked, or different prompts)")
        else:
            parts.append(f"{k}: stored {a!r} vs asked {b!r}")
    return "; ".join(parts)


class Store:
    """Finished batches of one spec, on disk (``root``) or in memory (``root=None``)."""

    def __init__(self, root: Path | None, spec, unit: int | None = None):
        self.root, self.spec = root, spec
        #: variants per stored batch: the spec's batch_size, or the unit chosen for batch_size="auto"
        self.unit = unit if unit is not None else (spec.batch_size if isinstance(spec.batch_size, int) else 8)
        self._mem: dict[tuple[str, int], xr.Dataset] = {}

    @classmethod
    def open(cls, root, spec, weights: str | None = None, layout: Layout | None = None,
             runtime: dict | None = None, unit: int | None = None) -> "Store":
        """Open (or create) the store of ``spec``; refuse one written by another spec, other weights, or on
        another device type or dtype (its numbers would not match). A reopened store keeps its batch unit."""
        if root is None:
            return cls(None, spec, unit)
        root = Path(root)
        spec_file = root / "spec.json"
        check_out(root)
        if not spec_file.exists():
            record = {"fingerprint": spec.fingerprint(), "weights": weights, "spec": spec.to_dict(),
                      "layout": layout.to_dict() if layout is not None else None,
                      "runtime": runtime, "unit": unit}
            tmp = spec_file.with_suffix(".tmp")
            tmp.write_text(json.dumps(record, indent=1))
            os.replace(tmp, spec_file)
            return cls(root, spec, unit)
        stored = _read_record(spec_file)
        if stored.get("fingerprint") != spec.fingerprint():
            raise ResultsError(
                f"{root} holds results of a different experiment ({_spec_diff(stored.get('spec', {}), spec.to_dict())}). "
                "Choose another output folder, or delete this one to start over."
            )
        was, now = stored.get("runtime") or {}, runtime or {}
        key = ("device_type", "dtype")
        if was and now and tuple(was.get(k) for k in key) != tuple(now.get(k) for k in key):
            raise ResultsError(
                f"{root} was written on {was.get('device_type')} in {was.get('dtype')}, this run is on "
                f"{now.get('device_type')} in {now.get('dtype')}: the numbers would not match the finished batches. "
                f"Resume with --device {was.get('device_type')} --dtype {was.get('dtype')}, or choose another --out.",
                field="out",
            )
        if weights and stored.get("weights") and stored["weights"] != weights:
            raise ResultsError(
                f"{root} was written with other weights of {spec.model!r} (digest {stored['weights']}, now {weights}): "
                "the model changed since. Choose another output folder, or delete this one to recompute."
            )
        _remove_stale_temporaries(root)
        return cls(root, spec, stored.get("unit") or unit)

    def _path(self, kind: str, i: int) -> Path:
        return self.root / "batches" / f"{kind}-{i:05d}.nc"

    def has(self, kind: str, i: int) -> bool:
        return (kind, i) in self._mem if self.root is None else self._path(kind, i).exists()

    def _put(self, kind: str, i: int, ds: xr.Dataset) -> None:
        if self.root is None:
            self._mem[(kind, i)] = ds
        else:
            _atomic_netcdf(ds, self._path(kind, i))

    def batches(self, kind: str) -> list[xr.Dataset]:
        if self.root is None:
            return [ds for (k, _), ds in sorted(self._mem.items()) if k == kind]
        folder = self.root / "batches"
        return [_open(p) for p in sorted(folder.glob(f"{kind}-*.nc"))] if folder.exists() else []

    def write_baseline(self, i: int, out: dict) -> None:
        data = {
            "pair_i": ("job", out["pair"]), "seed_v": ("job", out["seed"]),
            "source_image": (("job", "y", "x", "rgb"), out["source_image"]),
            "target_image": (("job", "y", "x", "rgb"), out["target_image"]),
        }
        for role in ("source", "target"):
            for name, values in out[role].items():
                data[f"{role}__{name}"] = ("job", values.astype(str) if name == "ocr_text" else values)
        self._put("base", i, xr.Dataset(data))

    def write_cells(self, i: int, out: dict) -> None:
        cells = out["cells"]
        data = {
            "pair_i": ("cell", [c.pair for c in cells]), "group_i": ("cell", [c.group for c in cells]),
            "t_start_v": ("cell", [c.t_start for c in cells]), "seed_v": ("cell", [c.seed for c in cells]),
            "head_v": ("cell", [c.head for c in cells]),
            "patched_image": (("cell", "y", "x", "rgb"), out["images"]),
        }
        for name, values in out["metrics"].items():
            data[name] = ("cell", values.astype(str) if name == "ocr_text" else values)
        self._put("cell", i, xr.Dataset(data))

    def source_images(self) -> dict[tuple[int, int], np.ndarray]:
        out = {}
        for ds in self.batches("base"):
            for j in range(ds.sizes["job"]):
                out[(int(ds.pair_i[j]), int(ds.seed_v[j]))] = ds.source_image.values[j]
        return out

    def finalize(self, ds: xr.Dataset) -> None:
        if self.root is not None:
            _atomic_netcdf(ds, self.root / "results.nc")


def check_out(root: str | Path) -> Path:
    """Make sure ``root`` can hold a store (a folder we can write), before any model is loaded or run."""
    root = Path(root)
    if root.exists() and not root.is_dir():
        raise ResultsError(f"{root} is a file, not a folder; choose a folder for the results.", field="out")
    try:
        root.mkdir(parents=True, exist_ok=True)
        with tempfile.NamedTemporaryFile(dir=root, prefix=".write-check-"):
            pass
    except OSError as exc:
        raise ResultsError(f"cannot write to {root} ({exc.strerror or exc}); choose a writable folder.", field="out") from None
    return root


def _read_record(spec_file: Path) -> dict:
    try:
        record = json.loads(spec_file.read_text(encoding="utf-8"))
        if not isinstance(record, dict):
            raise ValueError("not a JSON object")
        return record
    except (ValueError, UnicodeDecodeError):
        raise ResultsError(
            f"{spec_file} is corrupted; delete the folder {spec_file.parent} or choose another --out."
        ) from None


def _remove_stale_temporaries(root: Path) -> None:
    """Temporary batch files are renamed into place when whole; one still here was cut off by a kill."""
    for tmp in (root / "batches").glob("*.tmp"):
        tmp.unlink(missing_ok=True)


def share_baselines(source: str | Path, target: str | Path) -> int:
    """Copy the finished baseline batches of one store into another; returns how many were copied.

    Baselines (the unpatched source and target images) depend only on the model, the pairs, the seeds,
    the generation settings, the metrics and the batch size, so two specs that agree on those (a layer
    sweep and its layer-count follow-up, say) can share them instead of generating them twice.
    The caller vouches for that agreement.
    """
    src, dst = Path(source) / "batches", Path(target) / "batches"
    dst.mkdir(parents=True, exist_ok=True)
    files = sorted(src.glob("base-*.nc"))
    for f in files:
        if not (dst / f.name).exists():
            shutil.copyfile(f, dst / f.name)
    return len(files)


def _grid(spec, layout: Layout) -> tuple[list[str], dict]:
    sites, groups = layout.sites, [layout.group_sites(g) for g in range(len(layout.groups))]
    group_dim = "site" if spec.grouping == "each" else "n_sites"
    dims = ["pair", group_dim, "t_start", "seed"] + (["head"] if spec.per_head else [])
    coords: dict = {
        "pair": np.arange(len(spec.pairs)),
        "t_start": list(spec.t_starts), "seed": list(spec.seeds),
        "source_prompt": ("pair", [p.source_prompt for p in spec.pairs]),
        "target_prompt": ("pair", [p.target_prompt for p in spec.pairs]),
        "source_text": ("pair", [p.source_text for p in spec.pairs]),
        "target_text": ("pair", [p.target_text for p in spec.pairs]),
    }
    if spec.grouping == "each":
        coords.update(
            site=[s.index for s in sites], site_name=("site", [s.name for s in sites]),
            site_kind=("site", [s.kind for s in sites]), site_label=("site", [s.label for s in sites]),
        )
    else:
        coords.update(n_sites=[len(g) for g in groups],
                      sites_used=("n_sites", [" ".join(s.label for s in g) for g in groups]))
    if spec.per_head:
        coords["head"] = list(spec.heads)
    return dims, coords


def assemble(spec, layout: Layout, store: Store) -> xr.Dataset:
    """The full labelled dataset from whatever batches the store holds."""
    dims, coords = _grid(spec, layout)
    shape = [len(coords[d]) if not isinstance(coords[d], tuple) else len(coords[d][1]) for d in dims]
    pos = {d: {v: i for i, v in enumerate(coords[d])} for d in ("t_start", "seed")}
    if spec.per_head:
        pos["head"] = {v: i for i, v in enumerate(spec.heads)}
    ds = xr.Dataset(coords=coords)
    done = np.zeros(shape, bool)
    metric_arrays: dict[str, np.ndarray] = {}
    images = None
    for b in store.batches("cell"):
        if images is None:
            images = np.zeros(shape + list(b.patched_image.shape[1:]), np.uint8)
        for j in range(b.sizes["cell"]):
            idx = (int(b.pair_i[j]), int(b.group_i[j]), pos["t_start"][int(b.t_start_v[j])], pos["seed"][int(b.seed_v[j])])
            if spec.per_head:
                idx += (pos["head"][int(b.head_v[j])],)
            done[idx] = True
            images[idx] = b.patched_image.values[j]
            for name in spec.metrics + ("ocr_text",):
                if name in b:
                    arr = metric_arrays.setdefault(
                        name, np.full(shape, "", object) if name == "ocr_text" else np.full(shape, np.nan)
                    )
                    value = b[name].values[j]
                    arr[idx] = str(value) if name == "ocr_text" else value  # plain str: NetCDF refuses mixed types
    for name, arr in metric_arrays.items():
        ds[name] = (dims, arr)
    ds["done"] = (dims, done)
    if images is not None:
        ds["patched_image"] = (dims + ["y", "x", "rgb"], images)
    _add_baselines(ds, spec, store)
    add_derived(ds)
    ds.attrs.update(spec=spec.to_json(), fingerprint=spec.fingerprint(), versions=json.dumps(versions()),
                    model=spec.model, intervention=json.dumps(spec.intervention, sort_keys=True),
                    layout=json.dumps(layout.to_dict()))
    return ds


def _add_baselines(ds: xr.Dataset, spec, store: Store) -> None:
    base = store.batches("base")
    if not base:
        return
    n_p, n_s = len(spec.pairs), len(spec.seeds)
    seed_pos = {v: i for i, v in enumerate(spec.seeds)}
    img_shape = list(base[0].source_image.shape[1:])
    arrays = {k: np.zeros([n_p, n_s] + img_shape, np.uint8) for k in ("source_image", "target_image")}
    texts = {k: np.full([n_p, n_s], "", object) for k in ("source_ocr_text", "target_ocr_text")}
    roles = {m: np.full([2, n_p, n_s], np.nan) for m in spec.metrics}
    for b in base:
        for j in range(b.sizes["job"]):
            p, s = int(b.pair_i[j]), seed_pos[int(b.seed_v[j])]
            for k in arrays:
                arrays[k][p, s] = b[k].values[j]
            for r, role in enumerate(("source", "target")):
                if f"{role}__ocr_text" in b:
                    texts[f"{role}_ocr_text"][p, s] = str(b[f"{role}__ocr_text"].values[j])
                for m in spec.metrics:
                    if f"{role}__{m}" in b:
                        roles[m][r, p, s] = b[f"{role}__{m}"].values[j]
    for k, v in arrays.items():
        ds[k] = (("pair", "seed", "y", "x", "rgb"), v)
    for k, v in texts.items():
        ds[k] = (("pair", "seed"), v)
    ds.coords["role"] = ["source", "target"]
    for m, v in roles.items():
        ds[f"baseline_{m}"] = (("role", "pair", "seed"), v)


def open_results(path: str | Path) -> xr.Dataset:
    """Open a saved dataset: a store folder (its results.nc, or its batches if it was interrupted) or a .nc file.

    Never loads a model: an interrupted store is reassembled from the layout its spec.json records."""
    path = Path(path)
    if path.is_dir():
        if (path / "results.nc").exists():
            return add_derived(_checked(_open(path / "results.nc"), path / "results.nc"))
        if (path / "spec.json").exists():
            return _reassemble(path)
        raise ResultsError(f"{path} is not a diffprobe results folder (no results.nc or spec.json).")
    if not path.exists():
        raise ResultsError(f"No results at {path}; pass the --out folder of a sweep or its results.nc.")
    return add_derived(_checked(_open(path), path))


def add_derived(ds: xr.Dataset) -> xr.Dataset:
    """Add the metrics derived from a dataset's stored images (``moved_target``), in place, when missing
    (results written before they existed gain them on opening). Unfinished cells stay NaN."""
    from .metrics.image import moved

    name = "moved_target"  # the one metric of diffprobe.metrics.DERIVED
    if name in ds or not all(k in ds for k in ("patched_image", "source_image", "target_image")):
        return ds
    patched, src, tgt = ds.patched_image, ds.source_image.values, ds.target_image.values
    dims = [d for d in patched.dims if d not in ("y", "x", "rgb")]
    p_ax, s_ax = dims.index("pair"), dims.index("seed")
    images, done = patched.values, ds["done"].transpose(*dims).values
    out = np.full(done.shape, np.nan)
    for idx in zip(*np.nonzero(done)):  # one image at a time: a sweep at 1024 px holds thousands of cells
        out[idx] = moved(images[idx], src[idx[p_ax], idx[s_ax]], tgt[idx[p_ax], idx[s_ax]])
    ds[name] = (dims, out)
    base = np.full((2,) + src.shape[:2], np.nan)
    for p, s in np.ndindex(*src.shape[:2]):
        base[:, p, s] = [moved(img, src[p, s], tgt[p, s]) for img in (src[p, s], tgt[p, s])]
    if "role" in ds.coords:
        ds[f"baseline_{name}"] = (("role", "pair", "seed"), base)
    return ds


def _checked(ds: xr.Dataset, path: Path) -> xr.Dataset:
    missing = [k for k in ("spec", "fingerprint") if k not in ds.attrs]
    if missing or "done" not in ds:
        raise ResultsError(
            f"{path} is a NetCDF file but not a diffprobe results dataset (no {'spec attribute' if missing else 'done'} "
            "variable); pass the --out folder of a `diffprobe sweep`, or its results.nc."
        )
    return ds


def _reassemble(path: Path) -> xr.Dataset:
    from .spec import Experiment

    record = _read_record(path / "spec.json")
    try:
        spec = Experiment.from_dict(record["spec"])
        layout = Layout.from_dict(record["layout"])
    except (KeyError, TypeError) as exc:
        raise ResultsError(
            f"{path / 'spec.json'} lacks {exc} (written by an older diffprobe, or damaged); re-run the sweep with "
            "the same spec to rebuild the dataset."
        ) from None
    return assemble(spec, layout, Store(path, spec, record.get("unit")))
