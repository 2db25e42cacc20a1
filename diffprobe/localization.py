"""The paper's localization study in one call: which few attention sites write the text, and from when.

"Precise Parameter Localization for Textual Generation in Diffusion Models" finds the attention layers
that decide the *content* of rendered text by one experiment repeated at every site: generate the
source prompt while that one site reads the target prompt's text keys/values, and ask OCR whether the
word moved to the target. :func:`localize` chains the four steps a researcher otherwise runs by hand,
each one a spec for the one runner (:func:`diffprobe.experiments.run`), each in its own resumable store:

1. **single sites** (``DIR/1-sites``): every text site alone, from step 0, on the sweep pairs; ranked by
   ``metric`` with :mod:`diffprobe.ranking` (the ranking of ``ds.dp.best_sites`` and the report);
2. **step windows** (``DIR/2-timesteps``): the ``top`` sites from several start steps t_s. The chosen
   t_s is the *latest* window in which the best site still keeps ``keep`` of its score from step 0:
   a later start leaves the early, layout-setting steps untouched, so the rest of the image stays the
   source's (the paper's picks: SDXL t_s = 4 of 50, IF 2 of 50, SD3 2 of 28);
3. **layer count** (``DIR/3-counts``): the ranked sites together, top 1, 2, 3, 5 and all
   (:func:`~diffprobe.experiments.count_follow_up`, the paper's Table 5). The localized set is the
   *fewest* top sites whose score keeps ``keep`` of the best count's score;
4. **confirmation** (``DIR/4-confirm-<k>sites-t<t_s>``): the localized set from the chosen t_s (and
   from step 0) on held-out pairs that no earlier step saw, so the reported score is not the one the
   sites were picked by.

Cross-attention sites are swept with ``inject`` (the target's text K/V from its own embeddings);
joint and single sites (SD3, FLUX) and models without injection with ``patch`` (K/V from a target
run in the same batch), as the paper does. Stages 1-3 share their unpatched baselines.

Outputs: ``DIR/report.html`` (the single-site sweep and the count trade-off, with the summary at the
top: "k sites, x% of the parameters, move the text to the target with F1 y from t_s z") and
``DIR/localized.json``, the localized sites and every setting that decided them, which
:func:`load_localized` reads back for other commands to use as their default sites. Rerunning the
same call resumes every stage; changing ``keep`` re-decides without generating anything but the
confirmation of a new decision.
"""
from __future__ import annotations

import json
import math
from collections.abc import Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from . import checks
from .bench import PromptPair
from .errors import MetricError, ResultsError, SpecError

__all__ = ["localize", "Localization", "Localized", "StudySettings", "load_localized", "text_sites",
           "LOCALIZED_FILE", "FORMAT"]

LOCALIZED_FILE = "localized.json"
FORMAT = "diffprobe.localized/1"
STAGES = ("sites", "timesteps", "counts", "confirm")


@dataclass(frozen=True)
class StudySettings:
    """What decides "localized"; recorded in ``localized.json``. Defaults are those of ``make demo``.

    Attributes:
        metric: ranks sites and decides t_s and k (default OCR F1 to the target text, the paper's; or
            ``moved_target``, pixels moved towards the target prompt's image, where OCR reads little).
        top: sites carried from the single-site sweep into the step-window sweep.
        t_starts: step windows of stage 2; None: 0, steps/5 and 2*steps/5.
        keep: a later t_s, or fewer sites, is accepted while it keeps this share of the reference score.
        held_out: the last ``held_out`` pairs are kept for the confirmation only.
        steps, seeds, guidance: generation settings of every stage.
        sites, intervention: what to sweep; None: every text site, inject on cross sites, else patch.
        metrics: metrics computed (default every metric but clip_t); must include ``metric`` unless it is
            derived in every result (``moved_target``).
        batch_size: variants per pipeline call (the unit of resume).
    """

    metric: str = "ocr_f1_target"
    top: int = 3
    t_starts: tuple[int, ...] | None = None
    keep: float = 0.9
    held_out: int = 4
    steps: int = 25
    seeds: tuple[int, ...] = (0,)
    guidance: float | None = None
    sites: str | None = None
    intervention: Any = None
    metrics: tuple[str, ...] = ()
    batch_size: int = 16

    def __post_init__(self):
        check = {
            "metric": lambda v: checks.text(v, "metric", SpecError, allow_empty=False),
            "top": lambda v: checks.integer(v, "top", SpecError, lo=1),
            "keep": lambda v: checks.number(v, "keep", SpecError, lo=0.0),
            "held_out": lambda v: checks.integer(v, "held_out", SpecError, lo=1),
            "steps": lambda v: checks.integer(v, "steps", SpecError, lo=1),
        }
        for name, fn in check.items():
            try:
                object.__setattr__(self, name, fn(getattr(self, name)))
            except SpecError as exc:
                exc.field = exc.field or name
                raise
        if not 0.0 < self.keep <= 1.0:
            raise SpecError(f"keep={self.keep} must lie in (0, 1]: the share of the best score a later t_s or "
                            "a smaller site set must keep (default 0.9).", field="keep")
        for name in ("t_starts", "seeds", "metrics"):
            value = getattr(self, name)
            if value is not None and not isinstance(value, (str, bytes)):
                object.__setattr__(self, name, tuple(value))
        self._check_grid()

    def _check_grid(self) -> None:
        from .errors import did_you_mean
        from .metrics import DEFAULT_METRICS, DERIVED, validate

        if self.t_starts is not None:
            ts = checks.int_list(self.t_starts, "t_starts", SpecError)
            if any(not 0 <= t < self.steps for t in ts):
                raise SpecError(f"t_starts={list(ts)}: each t_s must lie in [0, {self.steps}) for a {self.steps}-step "
                                "run.", field="t_starts")
            object.__setattr__(self, "t_starts", tuple(ts))
        try:
            computed = tuple(validate(list(self.metrics))) if self.metrics else tuple(DEFAULT_METRICS)
        except MetricError as exc:  # an unknown or repeated metric name
            raise SpecError(str(exc), field="metrics") from None
        if self.metric not in computed + DERIVED:
            raise SpecError(f"metric {self.metric!r} is not among the metrics computed ({', '.join(computed)}) or "
                            f"derived in every result ({', '.join(DERIVED)})." + did_you_mean(self.metric, computed + DERIVED),
                            field="metric")

    def windows(self) -> tuple[int, ...]:
        if self.t_starts is not None:
            return self.t_starts
        return tuple(sorted({0, self.steps // 5, 2 * self.steps // 5}))

    def to_dict(self) -> dict[str, Any]:
        d = asdict(self)
        d["t_starts"] = list(self.windows())
        return {k: list(v) if isinstance(v, tuple) else v for k, v in d.items()}


@dataclass(frozen=True)
class Localized:
    """The localized sites of one model (what ``localized.json`` holds); other commands' default sites."""

    model: str
    labels: tuple[str, ...]
    names: tuple[str, ...]
    t_start: int
    steps: int
    metric: str
    score: float
    threshold: float
    intervention: dict
    params: dict
    settings: dict = field(default_factory=dict)
    held_out: int = 0

    @property
    def site_spec(self) -> str:
        """The sites as one selection string (``"cross:9 cross:11"``), for ``probe.sites.parse`` or ``--sites``."""
        return " ".join(self.labels)

    def sites_on(self, probe):
        """The sites in ``probe``'s catalogue, found by module name; a :class:`SpecError` if the model lacks one."""
        from .errors import SiteError
        from .sites import SiteCatalogue

        try:
            return SiteCatalogue(probe.sites.by_name(n) for n in self.names)
        except SiteError as exc:
            raise SpecError(f"the localized sites of {self.model!r} do not fit {probe.name!r}: {exc}",
                            field="sites") from None

    def to_dict(self) -> dict[str, Any]:
        return {
            "format": FORMAT, "model": self.model,
            "sites": [{"label": la, "name": n} for la, n in zip(self.labels, self.names)],
            "t_start": self.t_start, "steps": self.steps, "metric": self.metric, "score": self.score,
            "threshold": self.threshold, "intervention": self.intervention, "params": self.params,
            "held_out_pairs": self.held_out, "settings": self.settings,
        }

    @classmethod
    def from_dict(cls, data: Any, where: str = "localized sites") -> "Localized":
        if not isinstance(data, dict) or data.get("format") != FORMAT:
            raise ResultsError(f"{where} is not a diffprobe localization file (format {FORMAT!r}); write one with "
                               "`diffprobe localize` or diffprobe.localize().", field="sites")
        try:
            sites = data["sites"]
            return cls(model=str(data["model"]), labels=tuple(str(s["label"]) for s in sites),
                       names=tuple(str(s["name"]) for s in sites), t_start=int(data["t_start"]),
                       steps=int(data["steps"]), metric=str(data["metric"]), score=float(data["score"]),
                       threshold=float(data["threshold"]), intervention=dict(data["intervention"]),
                       params=dict(data["params"]), settings=dict(data.get("settings", {})),
                       held_out=int(data.get("held_out_pairs", 0)))
        except (KeyError, TypeError, ValueError) as exc:
            raise ResultsError(f"{where} is damaged ({type(exc).__name__}: {exc}); rerun `diffprobe localize` "
                               "with the same options to rewrite it.", field="sites") from None


def load_localized(path: str | Path) -> Localized:
    """Read ``localized.json`` (or a ``localize`` output folder holding it).

    ``load_localized("runs/loc").site_spec`` is a site selection any command takes; ``.t_start`` the step
    from which to edit; ``.sites_on(probe)`` checks the sites against a loaded model."""
    path = Path(path)
    file = path / LOCALIZED_FILE if path.is_dir() else path
    try:
        text = file.read_text(encoding="utf-8")
    except FileNotFoundError:
        raise ResultsError(f"No localized sites at {file}; run `diffprobe localize --out {path}` first.",
                           field="sites") from None
    except (OSError, UnicodeDecodeError) as exc:
        raise ResultsError(f"cannot read {file} ({exc}).", field="sites") from None
    try:
        data = json.loads(text)
    except json.JSONDecodeError as exc:
        raise ResultsError(f"{file} is not JSON ({exc.msg}); rerun `diffprobe localize` to rewrite it.",
                           field="sites") from None
    return Localized.from_dict(data, str(file))


@dataclass
class Localization:
    """What :func:`localize` returns: the localized sites, each stage's dataset, the report and the file."""

    localized: Localized
    stages: dict[str, Any]
    report: Path
    file: Path
    summary: list[str]

    @property
    def sites(self) -> tuple[str, ...]:
        return self.localized.labels

    def __repr__(self) -> str:
        return f"Localization({self.summary[0]!r}, report={str(self.report)!r})"

    def _repr_html_(self) -> str:  # notebooks: the summary, then the single-site heatmap table
        from html import escape

        from .display import dataset_html

        lines = "".join(f"<li>{escape(s)}</li>" for s in self.summary[1:])
        return (f"<div><p><b>{escape(self.summary[0])}</b></p><ul>{lines}</ul>"
                f"<p>report: <code>{escape(str(self.report))}</code>, sites: <code>{escape(str(self.file))}"
                f"</code></p>{dataset_html(self.stages['sites'], self.localized.metric)}</div>")


def text_sites(probe, sites: str | None = None) -> tuple[str, str]:
    """The sites to sweep (default: every text site) and the paper's intervention for them:
    ``inject`` on cross-attention where the model supports it, else ``patch``."""
    kinds = [k for k in probe.sites.kinds if k in ("cross", "joint", "single")]
    if sites is None:
        if not kinds:
            raise SpecError(f"{probe.name} has no text attention sites to localize.", field="sites")
        sites = " ".join(f"{k}:all" for k in kinds)
    from .errors import SiteError

    try:
        chosen = {s.kind for s in probe.sites.parse(sites)}
    except SiteError as exc:
        raise SpecError(str(exc), field="sites") from None
    inject = chosen == {"cross"} and probe.adapter.supports_inject
    return sites, "inject" if inject else "patch"


def localize(probe, pairs: Sequence[PromptPair], out: str | Path, *, progress: bool | None = None,
             title: str | None = None, **settings) -> Localization:
    """Run (or resume) the localization study on ``probe`` with ``pairs``, writing everything under ``out``.

    ``settings`` are the fields of :class:`StudySettings` (``metric``, ``top``, ``t_starts``, ``keep``,
    ``held_out``, ``steps``, ``seeds``, ``guidance``, ``sites``, ``intervention``, ``metrics``,
    ``batch_size``). The last ``held_out`` pairs are used only for the confirmation. ``progress``:
    a bar per stage (None: on unless ``DIFFPROBE_PROGRESS=0``).
    """
    from .display import quiet

    study = _settings(settings)
    base, held = _base_spec(probe, pairs, study)
    out = _out(out)
    with quiet():
        stages, decision = _run_stages(probe, base, held, study, out, progress)
    localized = _localized(probe, base, study, decision, stages["confirm"])
    summary = _summary(probe, localized, stages, decision, study, len(base.pairs), len(held))
    file = _write_json(localized, out)
    maps = _attention(probe, held, localized, study)
    report = _report(stages, out, summary, title or f"Localization of the text on {probe.name}", study.metric, maps)
    return Localization(localized=localized, stages=stages, report=report, file=file, summary=summary)


def _settings(kwargs: dict) -> StudySettings:
    names = list(StudySettings.__dataclass_fields__)
    for key in kwargs:
        if key not in names:
            from .errors import did_you_mean

            raise SpecError(f"localize() got an unknown setting {key!r}.{did_you_mean(key, names)} "
                            f"Settings: {', '.join(names)}.", field=key)
    return StudySettings(**kwargs)


def _out(out) -> Path:
    from .results import check_out

    if not isinstance(out, (str, Path)):
        raise SpecError(f"out must be a folder path; got {type(out).__name__}.", field="out")
    return check_out(out)


def _base_spec(probe, pairs, study: StudySettings):
    """The single-site sweep's spec on the sweep pairs, and the held-out pairs."""
    from .experiments import Experiment

    if getattr(probe, "pipeline", None) is None:
        raise SpecError(f"{getattr(probe, 'name', probe)!r} is not a loaded pipeline (a meta build has no weights); "
                        "load one with diffprobe.load(...).", field="model")
    if isinstance(pairs, (str, bytes)) or not isinstance(pairs, Sequence):
        raise SpecError(f"pairs must be a list of PromptPair; got {type(pairs).__name__}.", field="pairs")
    pairs = tuple(p if isinstance(p, PromptPair) else PromptPair.from_dict(p) for p in pairs)
    if len(pairs) <= study.held_out:
        raise SpecError(f"{len(pairs)} pairs cannot hold out {study.held_out} for the confirmation and still sweep; "
                        f"pass at least {study.held_out + 1} pairs or a smaller held_out.", field="held_out")
    sites, intervention = text_sites(probe, study.sites)
    base = Experiment(model=probe.name, pairs=pairs[: len(pairs) - study.held_out],
                      intervention=study.intervention or intervention, sites=sites, t_starts=(0,),
                      steps=study.steps, seeds=study.seeds, guidance=study.guidance, metrics=study.metrics,
                      batch_size=study.batch_size)
    return base, pairs[len(base.pairs):]


@dataclass(frozen=True)
class _Decision:
    ranked: tuple[str, ...]
    t_start: int
    t_scores: dict[int, float]
    k: int
    k_scores: dict[int, float]
    threshold: float


def _passes(value: float, reference: float, keep: float, lower: bool) -> bool:
    """Within ``1 - keep`` of ``reference`` (relative to its size), on the metric's good side."""
    if math.isnan(value):
        return False
    slack = (1.0 - keep) * abs(reference)
    return value <= reference + slack if lower else value >= reference - slack


def _run_stages(probe, base, held, study: StudySettings, out: Path, progress) -> tuple[dict, _Decision]:
    from .display import progress_bar
    from .experiments import count_follow_up, run
    from .metrics import lower_is_better
    from .ranking import rank_sites, site_scores
    from .results import share_baselines

    def stage(i: int, name: str, spec, folder: str, what: str):
        with progress_bar(f"{i}/4 {what}", progress) as tick:
            return run(spec, probe=probe, store=out / folder, progress=tick)

    lower = lower_is_better(study.metric)
    ds_sites = stage(1, "sites", base, "1-sites", "single sites")
    ranked = tuple(s.label for s in rank_sites(ds_sites, study.metric))
    ts_spec = base.replace(sites=ranked[: study.top], t_starts=study.windows())
    share_baselines(out / "1-sites", out / "2-timesteps")  # same pairs, seeds and settings
    ds_ts = stage(2, "timesteps", ts_spec, "2-timesteps", "step windows")
    t_scores = {t: _score_of(site_scores(ds_ts, study.metric, t_start=t), ranked[0]) for t in study.windows()}
    first = min(t_scores)
    t_start = max(t for t, v in t_scores.items() if t == first or _passes(v, t_scores[first], study.keep, lower))

    count_spec = count_follow_up(base, ds_sites, study.metric)
    share_baselines(out / "1-sites", out / "3-counts")
    ds_counts = stage(3, "counts", count_spec, "3-counts", "layer counts")
    k_scores = {int(n): s.mean for n, s in zip(count_spec.counts, site_scores(ds_counts, study.metric))}
    finite = [v for v in k_scores.values() if not math.isnan(v)]
    best = (min(finite) if lower else max(finite)) if finite else math.nan
    k = min((n for n, v in k_scores.items() if _passes(v, best, study.keep, lower)), default=max(k_scores))
    threshold = best + (1 if lower else -1) * (1.0 - study.keep) * abs(best)

    confirm = base.replace(pairs=held, sites=ranked[:k], grouping="cumulative", counts=(k,),
                           t_starts=tuple(sorted({0, t_start})))
    ds_confirm = stage(4, "confirm", confirm, f"4-confirm-{k}sites-t{t_start}", "held-out check")
    stages = {"sites": ds_sites, "timesteps": ds_ts, "counts": ds_counts, "confirm": ds_confirm}
    return stages, _Decision(ranked, t_start, t_scores, k, k_scores, threshold)


def _score_of(scores, label: str) -> float:
    return next(s.mean for s in scores if s.label == label)


def _localized(probe, base, study: StudySettings, d: _Decision, ds_confirm) -> Localized:
    from .ranking import site_scores

    labels = d.ranked[: d.k]  # best first
    count = probe.count(" ".join(labels))
    names = dict(zip(count["sites"], count["names"]))  # probe.count lists catalogue order
    score = site_scores(ds_confirm, study.metric, t_start=d.t_start)[0].mean
    return Localized(
        model=probe.name, labels=labels, names=tuple(names[la] for la in labels), t_start=d.t_start, steps=study.steps,
        metric=study.metric, score=float(score), threshold=float(d.threshold), intervention=dict(base.intervention),
        params={"localized": count["localized_params"], "total": count["total_params"], "fraction": count["fraction"]},
        settings=study.to_dict(), held_out=study.held_out,
    )


def _metric_phrase(metric: str) -> str:
    return {"ocr_f1_target": "OCR F1", "exact_target": "exact-match rate",
            "moved_target": "the share of the way to the target image (pixels)"}.get(metric, metric)


def _n(count: int, noun: str) -> str:
    return f"{count} {noun}{'' if count == 1 else 's'}"


def _fmt(values: dict, key: str) -> str:
    return ", ".join(f"{key} {k}: {v:.3f}" for k, v in values.items())


def _summary(probe, loc: Localized, stages, d: _Decision, study: StudySettings, n_sweep: int, n_held: int) -> list[str]:
    from .ranking import rank_sites

    k = len(loc.labels)
    verb = "move the text to the target with" if loc.metric.endswith("_target") else "reach"
    head = (f"{k} site{'s' if k != 1 else ''} ({', '.join(loc.labels)}), {100 * loc.params['fraction']:.2f}% of "
            f"the parameters, {verb} {_metric_phrase(loc.metric)} {loc.score:.2f} "
            f"from t_s {loc.t_start} of {loc.steps} ({_n(n_held, 'held-out pair')}).")
    top = rank_sites(stages["sites"], study.metric, k=study.top)
    confirm0 = None
    if loc.t_start != 0:
        from .ranking import site_scores

        confirm0 = site_scores(stages["confirm"], study.metric, t_start=0)[0].mean
    lines = [
        head,
        f"1. Single sites: {stages['sites'].sizes[stages['sites'].dp.group_dim]} sites x {n_sweep} pairs from step 0 "
        f"({json.dumps(loc.intervention)}); best by {study.metric}: "
        + ", ".join(f"{s.label} {s.mean:.3f}" for s in top) + ".",
        f"2. Step windows of {d.ranked[0]}: {_fmt(d.t_scores, 't_s')}; chosen t_s {d.t_start}, the latest keeping "
        f"{study.keep:.0%} of its step-0 score.",
        f"3. Layer count from step 0: {_fmt(d.k_scores, 'top')}; chosen {d.k}, the fewest reaching "
        f"{d.threshold:.3f} ({study.keep:.0%} of the best).",
        f"4. Confirmation on {_n(n_held, 'held-out pair')}: {study.metric} {loc.score:.3f} from t_s {loc.t_start}"
        + (f" ({confirm0:.3f} from step 0)." if confirm0 is not None else "."),
    ]
    base = stages["sites"].get(f"baseline_{study.metric}")
    if base is not None:
        lines.append(f"Unpatched images, {study.metric}: source {float(base.sel(role='source').mean()):.3f}, "
                     f"target {float(base.sel(role='target').mean()):.3f} (what the model itself reaches).")
    return lines


def _write_json(loc: Localized, out: Path) -> Path:
    import os

    file = out / LOCALIZED_FILE
    tmp = file.with_name(file.name + ".tmp")
    try:
        tmp.write_text(json.dumps(loc.to_dict(), indent=1, allow_nan=True) + "\n", encoding="utf-8")
        os.replace(tmp, file)
    except OSError as exc:
        raise ResultsError(f"cannot write {file} ({exc.strerror or exc}).", field="out") from None
    return file


def _attention(probe, held: Sequence[PromptPair], loc: Localized, study: StudySettings, n: int = 2):
    """Where the source word lands at the localized sites: word maps for the first ``n`` held-out pairs (two
    small generations), shown in the report. None, with the report going without maps, when a word does not
    map to the model's tokens or the sites have no attention to map."""
    from .attention import attend
    from .errors import DiffprobeError

    pairs = list(held)[:n]
    try:
        return attend(probe, [p.source_prompt for p in pairs], steps=study.steps, sites=" ".join(loc.labels),
                      words=list(dict.fromkeys(p.source_text for p in pairs)), seed=study.seeds[0],
                      guidance=study.guidance)
    except DiffprobeError:
        return None


def _report(stages, out: Path, summary: list[str], title: str, metric: str, attention=None) -> Path:
    from .report import write_report

    return write_report(stages["sites"], out / "report.html", metric=metric, counts=stages["counts"],
                        title=title, summary=summary, attention=attention)
