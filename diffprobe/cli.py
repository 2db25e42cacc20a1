"""The ``diffprobe`` command line: parse -> Experiment spec -> runner -> save -> report.

No logic lives here beyond turning options into the same objects a notebook builds. Errors reach
the user as one line and a non-zero exit code; ``--verbose`` shows the traceback.
"""
from __future__ import annotations

import json
import sys
import time
from pathlib import Path
from typing import Optional

import typer

app = typer.Typer(
    name="diffprobe", no_args_is_help=True, add_completion=False, pretty_exceptions_enable=False,
    help=(
        "Look inside text-to-image diffusion models: list attention sites, patch/inject/ablate them "
        "across the denoising loop, and sweep to localize the layers that write text.\n\n"
        "Examples:\n\n"
        "  diffprobe layers sdxl-base-1.0:meta --kind cross\n\n"
        "  diffprobe count sdxl-base-1.0:meta --sites cross:55-57\n\n"
        "  diffprobe sweep --bench glyph --n 8 --out runs/demo\n\n"
        "  diffprobe report runs/demo"
    ),
)

_state = {"verbose": False}


#: the option a user types for each spec field (and argument) an error can be about
OPTION_OF = {
    "model": "--model", "pairs": "--pairs/--bench", "intervention": "--intervention", "sites": "--sites",
    "grouping": "--grouping", "counts": "--counts", "t_starts": "--t-start", "heads": "--heads",
    "per_head": "--per-head", "seeds": "--seeds", "steps": "--steps", "guidance": "--guidance",
    "metrics": "--metrics", "batch_size": "--batch-size", "out": "--out", "metric": "--metric",
    "threads": "--threads", "n": "--n", "config": "--config", "device": "--device", "dtype": "--dtype",
    "offload": "--offload", "cluster": "--cluster", "ocr_engine": "--ocr", "share_prefix": "--no-share-prefix", "lora": "--lora",
}


def _fail(exc: BaseException) -> None:
    from rich.console import Console
    from rich.markup import escape

    if _state["verbose"]:
        raise exc
    field = getattr(exc, "field", None)
    where = _state.get("origin", {}).get(field, OPTION_OF.get(field)) if field else None
    prefix = f"{where}: " if where else ""
    Console(stderr=True).print(f"[bold red]error:[/] {escape(prefix + str(exc))}", markup=True, highlight=False,
                               soft_wrap=True)
    raise typer.Exit(2)


def _guard(fn):
    import functools

    @functools.wraps(fn)
    def wrapper(*args, **kwargs):
        from .errors import DiffprobeError

        try:
            return fn(*args, **kwargs)
        except DiffprobeError as exc:
            _fail(exc)

    return wrapper


def _quiet_libraries() -> None:
    import diffusers
    import transformers

    diffusers.utils.logging.set_verbosity_error()
    transformers.utils.logging.set_verbosity_error()
    diffusers.utils.logging.disable_progress_bar()
    transformers.utils.logging.disable_progress_bar()


def _set_threads(threads: Optional[int]) -> None:
    """On a loaded CPU, torch's default of one thread per core can collapse; let the user pin it."""
    if threads is not None:
        import torch

        from .errors import SpecError

        if threads < 1:
            raise SpecError(f"--threads {threads}: give a positive number of CPU threads, e.g. --threads 1.")
        torch.set_num_threads(threads)


def _ints(text: Optional[str], field: str) -> Optional[tuple[int, ...]]:
    from .errors import SpecError

    if text is None:
        return None
    try:
        return tuple(int(t) for t in text.replace(" ", "").split(",") if t)
    except ValueError:
        raise SpecError(f"takes comma-separated integers such as 0,2,4; got {text!r}.", field=field) from None


def _batch_size(text: Optional[str]):
    """An integer, or the text as typed ('auto'; anything else the spec refuses with the fix)."""
    try:
        return None if text is None else int(text)
    except ValueError:
        return text


def _intervention(text: Optional[str]):
    """A kind (inject, patch, ablate, scale) or a JSON intervention template such as '{"kind": "scale", "factor": 0}'."""
    from .errors import SpecError

    if text is None or not text.lstrip().startswith("{"):
        return text
    try:
        return json.loads(text)
    except json.JSONDecodeError as exc:
        raise SpecError(f"cannot read {text!r} as a JSON intervention template ({exc.msg}); write e.g. "
                        '\'{"kind": "ablate", "mode": "empty"}\'.', field="intervention") from None


@app.callback()
def main_options(verbose: bool = typer.Option(False, "--verbose", "-v", help="Show tracebacks on errors.")):
    _state["verbose"] = verbose


@app.command()
@_guard
def layers(
    model: str = typer.Argument("glyph", help="Hub id, local pipeline folder, 'glyph', 'spell', 'glyph-mmdit', or '<name>:meta' (e.g. sdxl-base-1.0:meta)."),
    kind: Optional[str] = typer.Option(None, help="Only sites of this kind: self, cross, joint, single."),
    as_json: bool = typer.Option(False, "--json", help="Print JSON objects instead of a table."),
):
    """List the attention sites of MODEL in execution order.\n\nExample: diffprobe layers sdxl-base-1.0:meta --kind cross"""
    from .loading import load

    _quiet_libraries()
    probe = load(model)
    sites = probe.sites.of_kind(kind) if kind else probe.sites
    rows = [{**s.to_dict(), "label": s.label} for s in sites]
    if as_json:
        typer.echo(json.dumps(rows, indent=1))
        return
    from rich.console import Console
    from rich.table import Table

    table = Table(title=f"{probe.name}: {len(sites)} sites ({', '.join(f'{n} {k}' for k, n in sites.counts().items())})")
    for col in ("label", "name", "block", "heads", "head_dim", "kv params"):
        table.add_column(col, justify="right" if col in ("heads", "head_dim", "kv params") else "left")
    for s in sites:
        table.add_row(s.label, s.name, s.block, str(s.heads), str(s.head_dim), f"{s.kv_params:,}")
    Console().print(table)


@app.command()
@_guard
def count(
    model: str = typer.Argument(..., help="Hub id, local folder, 'glyph', 'spell', 'glyph-mmdit' or '<name>:meta'."),
    sites: str = typer.Option("cross:all", "--sites", help="Site spec, e.g. cross:55-57, joint:10, 'up_blocks.0.*'."),
    as_json: bool = typer.Option(False, "--json", help="Print JSON."),
):
    """Text K/V parameters of SITES, the denoiser's total, and the fraction (the paper's Table 1).\n\nExample: diffprobe count sdxl-base-1.0:meta --sites cross:55-57"""
    from .loading import load

    _quiet_libraries()
    out = load(model).count(sites)
    if as_json:
        typer.echo(json.dumps({k: out[k] for k in ("sites", "localized_params", "total_params", "fraction")}))
        return
    typer.echo(
        f"{len(out['sites'])} sites ({', '.join(out['sites'])}): {out['localized_params'] / 1e6:.1f}M of "
        f"{out['total_params'] / 1e6:.1f}M denoiser parameters = {100 * out['fraction']:.2f}%"
    )


@app.command("metrics")
def list_metrics_cmd():
    """List the metrics a sweep can compute."""
    from .metrics import list_metrics, unavailable

    missing = unavailable()
    for name, desc in list_metrics():
        note = f"  [unavailable: {missing[name]}]" if name in missing else ""
        typer.echo(f"{name:22s} {desc}{note}")


def _pairs(pairs_file: Optional[Path], bench: Optional[str], n: int, seed: int, model: str):
    from . import bench as benchmod
    from .errors import SpecError, did_you_mean

    if pairs_file is not None:
        return benchmod.read_jsonl(pairs_file)
    bench = bench or {"glyph": "glyph", "spell": "spell", "glyph-mmdit": "spell"}.get(model, "simple")
    if bench == "glyph":
        from .glyph_bench import glyph_pairs

        return glyph_pairs(n, seed)
    if bench == "spell":
        from .glyph_bench import spell_pairs

        return spell_pairs(n, seed)
    if bench == "simple":
        return benchmod.simple_bench(n, seed=seed)
    if bench == "creative":
        return benchmod.creative_bench(n, seed=seed)
    raise SpecError(f"--bench {bench!r} unknown; choose simple, creative, glyph or spell (or pass --pairs FILE.jsonl)."
                    + did_you_mean(bench, ["simple", "creative", "glyph", "spell"]))


def _spec_from_options(o: dict):
    from .spec import Experiment

    fields = {k: v for k, v in o["overrides"].items() if v is not None}
    # an error about a field names the option the user typed, or the --config file it came from
    _state["origin"] = {k: OPTION_OF.get(k, k) for k in fields}
    if o["config"] is not None:
        spec = Experiment.from_toml(o["config"])
        _state["origin"] = {**{k: f"{k} (in --config {o['config']})" for k in spec.to_dict()}, **_state["origin"]}
        return spec.replace(**fields) if fields else spec
    fields["pairs"] = tuple(_pairs(o["pairs"], o["bench"], o["n"], o["pair_seed"], fields.get("model", "glyph")))
    return Experiment(**fields)


@app.command()
@_guard
def sweep(
    model: Optional[str] = typer.Option(None, help="Model (default: the embedded 'glyph' model)."),
    sites: Optional[str] = typer.Option(None, help="Sites to sweep, e.g. cross:all, joint:0-23 (default cross:all)."),
    intervention: Optional[str] = typer.Option(
        None, help='inject | patch | ablate | scale (default inject), or a JSON template such as '
        '\'{"kind": "ablate", "mode": "empty"}\' or \'{"kind": "scale", "factor": 0}\'.'),
    pairs: Optional[Path] = typer.Option(None, "--pairs", help="JSONL file of prompt pairs."),
    bench: Optional[str] = typer.Option(None, help="Built-in pairs: simple, creative, glyph, spell (held-out words for spell and glyph-mmdit)."),
    n: int = typer.Option(8, "--n", help="Number of pairs from --bench."),
    pair_seed: int = typer.Option(0, "--pair-seed", help="Seed for drawing --bench pairs."),
    steps: Optional[int] = typer.Option(None, help="Denoising steps (default 25)."),
    t_start: Optional[str] = typer.Option(None, "--t-start", help="Step windows' starts, e.g. 0,2,4."),
    seeds: Optional[str] = typer.Option(None, help="Generation seeds, e.g. 0,1."),
    heads: Optional[str] = typer.Option(None, help="Head indices to patch (default all heads)."),
    per_head: bool = typer.Option(False, "--per-head", help="Sweep each of --heads separately."),
    metrics: Optional[str] = typer.Option(None, help="Comma-separated metric names (see `diffprobe metrics`)."),
    guidance: Optional[float] = typer.Option(None, help="CFG guidance scale (default: the pipeline's)."),
    batch_size: Optional[str] = typer.Option(
        None, "--batch-size", help="Variants per pipeline call (default 8), or 'auto': the largest call that fits, "
        "found by halving on out-of-memory (units of 64 on a GPU, 8 on the CPU)."),
    device: Optional[str] = typer.Option(None, "--device", help="auto (CUDA, then MPS, then CPU; default), cpu, cuda, cuda:1, mps."),
    dtype: Optional[str] = typer.Option(
        None, "--dtype", help="auto (default: float32 on the CPU; float16 for SD1.x/SDXL/IF, bfloat16 for SD3/FLUX on a GPU), "
        "float32, float16, bfloat16."),
    grouping: Optional[str] = typer.Option(None, help="each (one site at a time) or cumulative (with --counts)."),
    counts: Optional[str] = typer.Option(None, help="For --grouping cumulative: 1,2,3,10."),
    config: Optional[Path] = typer.Option(None, "--config", help="Experiment spec TOML; other options override it."),
    out: Path = typer.Option(Path("diffprobe_out"), "--out", help="Output folder (re-running resumes)."),
    quiet: bool = typer.Option(False, "--quiet", "-q", help="No progress bar."),
    threads: Optional[int] = typer.Option(None, "--threads", help="CPU threads for torch (use 1 on a busy machine)."),
    ocr: Optional[str] = typer.Option(None, "--ocr", help="OCR engine of the text metrics: tesseract (default) or "
                                      "easyocr (the paper's)."),
    cluster: Optional[str] = typer.Option(
        None, "--cluster", help="Run the batches on dask workers: local:N (N worker processes here) or a scheduler "
        "address tcp://host:8786 (needs diffprobe[dask])."),
    lora: Optional[str] = typer.Option(
        None, "--lora", help="A `diffprobe finetune` output folder: sweep the model with these LoRA adapters."),
    no_share_prefix: bool = typer.Option(
        False, "--no-share-prefix", help="Run every variant through every step instead of running the steps before "
        "its t_s once per prompt and seed (slower; see docs/benchmarks.md)."),
):
    """Run (or resume) a sweep; write DIR/results.nc, DIR/report.html and images.

    Examples:

      diffprobe sweep --bench glyph --n 8 --t-start 0,2 --out runs/glyph

      diffprobe sweep --model ./sdxl --sites cross:all --bench simple --n 40 --steps 50 --t-start 4

      diffprobe sweep --model ./sd3 --intervention patch --sites joint:all --pairs pairs.jsonl
    """
    from .results import check_out

    _set_threads(threads)
    overrides = dict(
        model=model, sites=sites, intervention=_intervention(intervention), steps=steps,
        t_starts=_ints(t_start, "t_starts"), seeds=_ints(seeds, "seeds"),
        heads=_ints(heads, "heads"), per_head=per_head or None,
        metrics=tuple(metrics.split(",")) if metrics else None, guidance=guidance, batch_size=_batch_size(batch_size),
        device=device, dtype=dtype, ocr_engine=ocr,
        grouping=grouping, counts=_ints(counts, "counts"), share_prefix=False if no_share_prefix else None,
        lora=lora,
    )
    spec = _spec_from_options(dict(config=config, overrides=overrides, pairs=pairs, bench=bench, n=n, pair_seed=pair_seed))
    check_out(out)  # before the model loads: a bad --out fails in milliseconds
    _quiet_libraries()
    ds = _run_with_progress(spec, out, quiet, cluster)
    _write_outputs(ds, out)


def _run_with_progress(spec, out: Path, quiet: bool, cluster: Optional[str] = None):
    from rich.console import Console
    from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn, TimeRemainingColumn

    from .experiments import run
    from .loading import load

    console = Console(stderr=True, quiet=quiet)
    probe = client = None
    if cluster is not None:  # the workers load the model; the progress bar follows the cluster's batches
        from .cluster import connect

        console.print(f"connecting to {cluster} ...", markup=False)
        client = connect(cluster)
    else:
        console.print(f"loading {spec.model}" + (f" with LoRA {spec.lora}" if spec.lora else "") + " ...", markup=False)
        probe = load(spec.model, device=spec.device, dtype=spec.dtype, lora=spec.lora)
        console.print("runs on " + ", ".join(f"{k} {v}" for k, v in probe.runtime.items() if k != "device_type"),
                      markup=False)
        if not quiet:  # the pipeline's own per-step bar, for long runs
            probe.pipeline.set_progress_bar_config(disable=False, leave=False, desc="denoising", unit="step")
    console.print(f"{len(spec.pairs)} pairs, sites {spec.sites}, {json.dumps(spec.intervention)}, {spec.steps} steps "
                  f"-> {out}", markup=False)
    with Progress(TextColumn("[bold]sweep"), BarColumn(), MofNCompleteColumn(), TextColumn("batches"),
                  TimeElapsedColumn(), TextColumn("eta"), TimeRemainingColumn(), console=console, disable=quiet) as bar:
        task = bar.add_task("sweep", total=None)

        def progress(done: int, total: int) -> None:
            bar.update(task, completed=done, total=total)

        try:
            return run(spec, probe=probe, store=out, progress=progress, client=client)
        except KeyboardInterrupt:
            bar.stop()
            raise _interrupted(
                f"[yellow]interrupted:[/] finished batches are kept in {out}; run the same command again to resume."
            ) from None


def _write_outputs(ds, out: Path) -> None:
    from rich.console import Console
    from rich.table import Table

    from .ranking import default_metric, rank_sites
    from .report import write_report

    metric = default_metric(ds)
    try:
        report = write_report(ds, out / "report.html", metric=metric)
        _save_images(ds, out / "images")
    except KeyboardInterrupt:
        raise _interrupted(
            f"[yellow]interrupted while writing the report:[/] the results are saved in {out / 'results.nc'}; "
            f"`diffprobe report {out}` rebuilds the report.") from None
    console = Console()  # --quiet silences progress, not the summary
    console.print(f"results: {out / 'results.nc'}\nreport:  {report}\nimages:  {out / 'images'}", markup=False)
    if "site" in ds.dims:
        top = rank_sites(ds, metric, k=5)
        paper = any(s.paper_set_f1 is not None for s in top)
        table = Table(title=f"top sites by {metric} (the report's ranking)")
        for col in ("site", "name", metric, *(["paper set F1"] if paper else []), "best cell"):
            table.add_column(col)
        for s in top:
            cell = ", ".join(f"{k} {v}" for k, v in s.best.items())
            extra = ["-" if s.paper_set_f1 is None else f"{s.paper_set_f1:.3f}"] if paper else []
            table.add_row(s.label, s.name, f"{s.mean:.3f}", *extra, cell)
        console.print(table)


def _save_images(ds, folder: Path) -> None:
    from PIL import Image

    folder.mkdir(parents=True, exist_ok=True)
    for role in ("source_image", "target_image"):
        if role in ds:
            for p in range(ds.sizes["pair"]):
                for s, seed in enumerate(ds.seed.values):
                    Image.fromarray(ds[role].values[p, s]).save(folder / f"pair{p:03d}_seed{seed}_{role.split('_')[0]}.png")


@app.command()
@_guard
def report(
    folder: Path = typer.Argument(..., help="A sweep's --out folder (or a results.nc file)."),
    metric: Optional[str] = typer.Option(None, help="Metric that ranks sites and colours heatmaps (default: ocr_f1_target if present)."),
    out: Optional[Path] = typer.Option(None, "--out", help="Report path (default FOLDER/report.html)."),
):
    """(Re)build the HTML report from a saved dataset.\n\nExample: diffprobe report runs/glyph"""
    from .ranking import default_metric
    from .report import write_report
    from .results import open_results

    ds = open_results(folder)
    target = out or ((folder if folder.is_dir() else folder.parent) / "report.html")
    typer.echo(str(write_report(ds, target, metric=metric or default_metric(ds))))


def _words(text: Optional[str], prompts: list[str]) -> list[str]:
    """--words a,b, or each prompt's quoted text."""
    import re

    if text:
        return [w.strip() for w in text.split(",") if w.strip()]
    return list(dict.fromkeys(w for p in prompts for w in re.findall(r'"([^"]+)"', p)))


@app.command()
@_guard
def attend(
    model: str = typer.Option("glyph", help="Model (default: the embedded 'glyph' model)."),
    prompt: list[str] = typer.Option(..., "--prompt", help="Prompt; repeat for several."),
    words: Optional[str] = typer.Option(None, "--words", help="Comma-separated words to map (default: the quoted text)."),
    sites: str = typer.Option("cross:all", "--sites", help="Text sites whose maps are averaged, e.g. cross:9."),
    steps: int = typer.Option(25, help="Denoising steps."),
    window: Optional[str] = typer.Option(None, "--window", help="Steps averaged, e.g. 5: or 0:10 (default all)."),
    heads: Optional[str] = typer.Option(None, help="Head indices averaged (default all)."),
    seed: int = typer.Option(0, help="Generation seed."),
    out: Path = typer.Option(Path("attend_out"), "--out", help="Output folder."),
    threads: Optional[int] = typer.Option(None, "--threads", help="CPU threads for torch (use 1 on a busy machine)."),
):
    """Where each word lands: images, one overlay per word, and a self-contained DIR/attention.html.

    Example: diffprobe attend --prompt 'a red sign that says "STOP"' --words STOP --sites cross:9 --out runs/attend
    """
    from .attention import attend as run_attend
    from .loading import load
    from .report.html import write_attention_page

    _state["origin"] = {"words": "--words", "sites": "--sites", "steps": "--window", "heads": "--heads"}
    _set_threads(threads)
    _quiet_libraries()
    result = run_attend(load(model), prompt, steps=steps, words=_words(words, prompt) or None, sites=sites,
                        window=window, heads=_ints(heads, "heads"), seed=seed)
    typer.echo(f"page:     {write_attention_page(result, out, f'attention maps: {model}')}\nimages:   {out / 'images'}"
               f"\noverlays: {out / 'overlays'}")


@app.command()
@_guard
def edit(
    model: str = typer.Option("glyph", help="Model (default: the embedded 'glyph' model)."),
    prompt: Optional[str] = typer.Option(None, "--prompt", help="Source prompt, with the text in quotes."),
    text: Optional[str] = typer.Option(None, "--text", help="New text (replaces the prompt's quoted text)."),
    target: Optional[str] = typer.Option(None, "--target", help="Or the whole target prompt."),
    sites: Optional[str] = typer.Option(None, "--sites", help="Sites, a localize folder/localized.json, or a sweep folder."),
    t_start: Optional[int] = typer.Option(None, "--t-start", help="First edited step t_s (default: from --sites, else 0)."),
    steps: int = typer.Option(25, help="Denoising steps."),
    seed: int = typer.Option(0, help="Generation seed."),
    compare: Optional[int] = typer.Option(None, "--compare", help="Instead: compare the methods on N glyph pairs."),
    out: Path = typer.Option(Path("edit_out"), "--out", help="Output folder."),
    threads: Optional[int] = typer.Option(None, "--threads", help="CPU threads for torch (use 1 on a busy machine)."),
):
    """Edit the rendered text at the localized sites; or, with --compare N, the methods' comparison table.

    Examples:

      diffprobe edit --prompt 'a red sign that says "STOP"' --text OPEN --sites cross:9 --t-start 5 --out runs/edit

      diffprobe edit --compare 16 --sites "cross:9 cross:10 cross:0" --t-start 5 --out runs/edit_compare
    """
    from . import edit as editing
    from .errors import InterventionError
    from .loading import load

    _state["origin"] = {"text": "--text", "sites": "--sites", "steps": "--t-start"}
    _set_threads(threads)
    _quiet_libraries()
    probe = load(model)
    if compare is not None:
        spec, found = editing.resolve_sites(probe, sites)
        top = [s.label for s in probe.sites.parse(spec)]
        md = editing.run_comparison(probe, out, n=compare, top=top, t_start=t_start if t_start is not None else
                                    (found or 0), steps=steps, seeds=(seed,),
                                    progress=lambda name: typer.echo(f"running: {name}", err=True))
        typer.echo(md.read_text())
        return
    if prompt is None:
        raise InterventionError("give --prompt (the source prompt), or --compare N.", field="text")
    result = editing.edit_text(probe, prompt, text, target=target, sites=sites, t_start=t_start, steps=steps,
                               seed=seed)
    typer.echo(f"{result.prompt!r} -> {result.target_prompt!r} at {' '.join(result.sites)} from t_s={result.t_start}"
               f"\npage: {editing.write_outputs(result, out)}")


@app.command()
@_guard
def guard(
    model: str = typer.Option("glyph", help="Model (default: the embedded 'glyph' model)."),
    lora: Optional[Path] = typer.Option(None, "--lora", help="LoRA adapters from `diffprobe finetune` to load."),
    prompt: list[str] = typer.Option([], "--prompt", help="Prompt, with the text to render in double quotes."),
    blocklist: Optional[Path] = typer.Option(None, "--blocklist", help="Block-list file: one word a line, # comments."),
    threshold: float = typer.Option(0.5, "--threshold", help="Classifier score (alt-profanity-check) that fires."),
    sites: Optional[str] = typer.Option(None, "--sites", help="Sites, a localize folder/localized.json or a sweep "
                                        "folder (default: the model's saved localization)."),
    t_start: Optional[int] = typer.Option(None, "--t-start", help="First changed step t_s (default: from --sites)."),
    benign: Optional[str] = typer.Option(None, "--benign", help="Replacement word (default: drawn from a list)."),
    benign_seed: int = typer.Option(0, "--benign-seed", help="Seed of the benign word's draw."),
    steps: int = typer.Option(25, help="Denoising steps."),
    seed: int = typer.Option(0, help="Generation seed."),
    compare: bool = typer.Option(False, "--compare", help="Instead: the defences' comparison table on the prompts "
                                 "(default for glyph: each block-list word on 3 templates)."),
    out: Path = typer.Option(Path("guard_out"), "--out", help="Output folder."),
    threads: Optional[int] = typer.Option(None, "--threads", help="CPU threads for torch (use 1 on a busy machine)."),
):
    """Screen the text a prompt asks to render; if it is flagged, only the localized sites read a benign word.

    Writes DIR/image.png, DIR/undefended.png and DIR/guard.json (score, threshold, block-list words, benign word,
    sites, t_s). See docs/applications.md.

    Examples:

      diffprobe guard --prompt 'a green road sign that says "DOG"' --blocklist words.txt --out runs/guard

      diffprobe guard --compare --blocklist diffprobe/bench_data/glyph_blocklist.txt --out runs/guard_compare
    """
    from . import safety as guarding
    from .errors import InterventionError
    from .loading import load

    _state["origin"] = {"text": "--prompt", "prompt": "--prompt", "sites": "--sites", "steps": "--t-start",
                        "threshold": "--threshold", "blocklist": "--blocklist", "benign": "--benign"}
    _set_threads(threads)
    _quiet_libraries()
    screen = (guarding.Screen.from_file(blocklist, threshold) if blocklist is not None
              else guarding.Screen(threshold=threshold))
    probe = load(model, lora=lora)
    if compare:
        prompts = list(prompt) or _guard_prompts(probe, screen)
        md = guarding.run_comparison(probe, out, prompts=prompts, screen=screen, sites=sites, t_start=t_start,
                                     steps=steps, seeds=(seed,), benign_seed=benign_seed,
                                     progress=lambda name: typer.echo(f"running: {name}", err=True))
        typer.echo(md.read_text())
        return
    if len(prompt) != 1:
        raise InterventionError("give one --prompt (or --compare).", field="prompt")
    result = guarding.guard(probe, prompt[0], screen=screen, sites=sites, t_start=t_start, benign=benign,
                            benign_seed=benign_seed, steps=steps, seed=seed, undefended=True)
    what = (f"fired ({result.verdict.reason}): {' '.join(result.sites)} read {result.safe_prompt!r} from "
            f"t_s={result.t_start}" if result.fired else f"passed ({result.verdict.reason}): generated unchanged")
    typer.echo(f"{what}\nrecord: {guarding.write_outputs(result, out)}")


def _guard_prompts(probe, screen) -> list[str]:
    """The glyph comparison's prompts: each block-list word on the blue book cover, green road sign and yellow taxi
    sign templates (combinations glyph was trained on)."""
    from .errors import InterventionError
    from .zoo.glyph import data

    if probe.name != "glyph" or not screen.blocklist:
        raise InterventionError("--compare needs --prompt (repeat it) unless the model is glyph with a --blocklist.",
                                field="prompt")
    return [data.prompt(t, w.upper()) for w in screen.blocklist for t in (1, 2, 5)]


@app.command()
@_guard
def finetune(
    model: str = typer.Option("glyph", help="Model (default: the embedded 'glyph' model)."),
    sites: Optional[str] = typer.Option(None, "--sites", help="Sites whose attention projections get LoRA adapters, "
                                        "e.g. 'cross:9 cross:10', cross:all."),
    random_like: Optional[str] = typer.Option(None, "--random-like", help="Instead: random other sites with the LoRA "
                                              "parameter count of these (the control)."),
    full: bool = typer.Option(False, "--full", help="Train every weight of the denoiser instead (no LoRA)."),
    data: str = typer.Option("glyph:heldout", "--data", help="glyph:heldout | glyph:train | glyph:all, or a JSONL "
                             "file of {\"prompt\", \"image\"} lines."),
    targets: str = typer.Option(",".join(("to_q", "to_k", "to_v", "to_out.0")), "--targets",
                                help="Linear layers of each site that get adapters."),
    rank: int = typer.Option(4, "--rank", help="LoRA rank (alpha = rank unless --alpha)."),
    alpha: Optional[float] = typer.Option(None, "--alpha", help="LoRA alpha."),
    steps: int = typer.Option(200, "--steps", help="Optimizer steps (a larger value continues a finished run)."),
    batch: int = typer.Option(8, "--batch", help="Images per step."),
    lr: float = typer.Option(1e-3, "--lr", help="AdamW learning rate (linear warm-up, then constant)."),
    warmup: int = typer.Option(20, "--warmup", help="Warm-up steps."),
    seed: int = typer.Option(0, "--seed", help="Seed of every random draw (deterministic for a seed)."),
    noisy_frac: float = typer.Option(0.0, "--noisy-frac", help="Share of timesteps drawn from [noisy-from*T, T) "
                                     "(glyph's recipe: 0.5)."),
    noisy_from: float = typer.Option(0.9, "--noisy-from", help="Start of that range as a fraction of T."),
    ckpt_every: int = typer.Option(50, "--ckpt-every", help="Checkpoint every N steps (resume point)."),
    bf16: bool = typer.Option(False, "--bf16", help="bf16 autocast (faster on some CPUs; fp32 by default)."),
    out: Path = typer.Option(Path("finetune_out"), "--out", help="Output folder (re-running resumes)."),
    quiet: bool = typer.Option(False, "--quiet", "-q", help="No progress bar."),
    threads: Optional[int] = typer.Option(None, "--threads", help="CPU threads for torch (use 1 on a busy machine)."),
):
    """LoRA (peft) on the chosen sites' attention projections, trained with the pipeline's own noise objective.

    Saves peft adapters in DIR (load with diffprobe.load(model, lora=DIR) or --lora), checkpoints DIR/checkpoint.pt;
    run the same command again to resume. See docs/applications.md.

    Examples:

      diffprobe finetune --sites "cross:9 cross:10" --data glyph:heldout --steps 150 --seed 0 --out runs/ft_top

      diffprobe finetune --random-like "cross:9 cross:10" --data glyph:heldout --steps 150 --out runs/ft_random
    """
    from .errors import SpecError
    from .lora import FinetuneSpec, finetune as run_finetune, random_sites_like
    from .loading import load

    _state["origin"] = {"sites": "--sites", "targets": "--targets", "rank": "--rank", "steps": "--steps",
                        "batch": "--batch", "lr": "--lr", "data": "--data", "out": "--out", "mode": "--full",
                        "noisy_frac": "--noisy-frac", "noisy_from": "--noisy-from", "ckpt_every": "--ckpt-every",
                        "warmup": "--warmup", "lora": "--model"}
    _set_threads(threads)
    _quiet_libraries()
    if sum(x is not None and x is not False for x in (sites, random_like, full or None)) != 1:
        raise SpecError("give exactly one of --sites, --random-like or --full.", field="sites")
    spec = FinetuneSpec(sites=sites or random_like, mode="full" if full else "lora", targets=tuple(targets.split(",")),
                        rank=rank, alpha=alpha, steps=steps, batch=batch, lr=lr, warmup=warmup, seed=seed,
                        noisy_frac=noisy_frac, noisy_from=noisy_from, ckpt_every=ckpt_every, bf16=bf16)
    probe = load(model, dtype="float32")  # trained in float32, on the GPU when present
    if random_like:
        spec = FinetuneSpec.from_dict(dict(spec.to_dict(), sites=random_sites_like(
            probe, random_like, targets=spec.targets, rank=rank, seed=seed)))
        typer.echo(f"random sites: {spec.sites}", err=True)
    result = run_finetune(probe, data, out, spec, progress=not quiet)
    typer.echo(f"{result.trainable_params:,} trainable parameters, {result.steps} steps, {result.seconds:.0f} s; "
               f"final loss {result.losses[-1]:.4f}\nsaved: {out}" + ("" if full else f" (load(model, lora={str(out)!r}))"))


@app.command()
@_guard
def demo(
    out: Path = typer.Option(Path("demo_out"), "--out", help="Output folder."),
    n: int = typer.Option(8, "--n", help="Prompt pairs."),
    quiet: bool = typer.Option(False, "--quiet", "-q"),
    threads: Optional[int] = typer.Option(None, "--threads", help="CPU threads for torch (use 1 on a busy machine)."),
):
    """The paper's study on the embedded model: `diffprobe localize --bench glyph` with the demo's small settings."""
    from .demo import run_demo

    _quiet_libraries()
    _set_threads(threads)
    run_demo(out, n=n, quiet=quiet)


@app.command()
@_guard
def localize(
    model: str = typer.Option("glyph", help="Model (default: the embedded 'glyph' model)."),
    pairs: Optional[Path] = typer.Option(None, "--pairs", help="JSONL file of prompt pairs; the last --held-out are held out."),
    bench: Optional[str] = typer.Option(None, help="Built-in pairs: simple, creative, glyph, spell (default: glyph for glyph, spell for spell and glyph-mmdit)."),
    n: int = typer.Option(8, "--n", help="Sweep pairs drawn from --bench (plus --held-out more)."),
    held_out: int = typer.Option(4, "--held-out", help="Pairs kept for the confirmation only."),
    pair_seed: int = typer.Option(0, "--pair-seed", help="Seed for drawing --bench pairs."),
    sites: Optional[str] = typer.Option(None, help="Sites to sweep (default every text site)."),
    intervention: Optional[str] = typer.Option(None, help="inject | patch (default inject on cross sites, else patch)."),
    steps: int = typer.Option(25, help="Denoising steps."),
    t_start: Optional[str] = typer.Option(None, "--t-start", help="Step windows of the t_s sweep (default 0,steps/5,2*steps/5)."),
    top: int = typer.Option(3, help="Top sites carried into the t_s sweep."),
    metric: str = typer.Option("ocr_f1_target", help="Metric that ranks the sites and decides t_s and the count."),
    keep: float = typer.Option(0.9, help="Share of the best score a later t_s or a smaller site set must keep."),
    seeds: Optional[str] = typer.Option(None, help="Generation seeds, e.g. 0,1 (default 0)."),
    metrics: Optional[str] = typer.Option(None, help="Comma-separated metric names (default all but clip_t)."),
    guidance: Optional[float] = typer.Option(None, help="CFG guidance scale (default: the pipeline's)."),
    batch_size: int = typer.Option(16, "--batch-size", help="Variants per pipeline call."),
    device: str = typer.Option("auto", "--device", help="auto (CUDA, then MPS, then CPU), cpu, cuda, cuda:1, mps."),
    dtype: str = typer.Option("auto", "--dtype", help="auto (float32 on the CPU, the family's dtype on a GPU), "
                              "float32, float16, bfloat16."),
    out: Path = typer.Option(Path("localize_out"), "--out", help="Output folder (re-running resumes)."),
    quiet: bool = typer.Option(False, "--quiet", "-q", help="No progress bars."),
    threads: Optional[int] = typer.Option(None, "--threads", help="CPU threads for torch (use 1 on a busy machine)."),
    lora: Optional[str] = typer.Option(
        None, "--lora", help="A `diffprobe finetune` output folder: localize on the model with these LoRA adapters."),
):
    """The paper's localization study end to end: single sites, step windows, layer count, held-out check.

    Writes DIR/report.html (summary at the top) and DIR/localized.json (the sites other commands take).

    One resumable store per stage: rerun the same command to resume. See docs/localize.md.

    Examples:

      diffprobe localize --bench glyph --n 8 --out runs/loc

      diffprobe localize --model ./sd3 --pairs pairs.jsonl --held-out 10 --steps 28 --t-start 0,2,4 --out runs/sd3
    """
    from .display import quiet as quiet_libraries
    from .loading import load
    from .localization import StudySettings
    from .localization import localize as run_localize
    from .results import check_out

    _state["origin"] = {"held_out": "--held-out", "top": "--top", "keep": "--keep", "sites": "--sites",
                        "metric": "--metric", "steps": "--steps"}
    _set_threads(threads)
    if held_out < 1:
        from .errors import SpecError

        raise SpecError(f"needs at least 1 held-out pair for the confirmation; got {held_out}.", field="held_out")
    settings = dict(held_out=held_out, top=top, metric=metric, keep=keep, steps=steps, batch_size=batch_size,
                    t_starts=_ints(t_start, "t_starts"), seeds=_ints(seeds, "seeds") or (0,), guidance=guidance,
                    metrics=tuple(metrics.split(",")) if metrics else (), sites=sites,
                    intervention=_intervention(intervention))
    StudySettings(**settings)  # every setting checked before the model loads
    study_pairs = _pairs(pairs, bench, n + held_out, pair_seed, model)
    check_out(out)  # before the model loads
    with quiet_libraries():
        probe = load(model, device=device, dtype=dtype, lora=lora)
    result = run_localize(probe, study_pairs, out, progress=not quiet, **settings)
    typer.echo("\n".join(result.summary) + f"\nreport: {result.report}\nsites:  {result.file}")


INTERRUPTED = 130


def _interrupted(message: str) -> "typer.Exit":
    """Say what Ctrl-C kept, once, and exit 130."""
    from rich.console import Console

    Console(stderr=True).print(message, highlight=False)
    _state["interrupt_said"] = True
    return typer.Exit(INTERRUPTED)


def main() -> int:
    """The console entry point: exit 0 on success, 2 on a refused input, 130 on Ctrl-C (never a traceback).

    typer turns a Ctrl-C that no command handled (e.g. while a model loads) into a silent exit 130; this says so."""
    import click

    _state["interrupt_said"] = False
    try:
        code = app(standalone_mode=False)
    except (KeyboardInterrupt, click.exceptions.Abort):
        code = INTERRUPTED
    except click.ClickException as exc:
        exc.show()
        return exc.exit_code
    if code == INTERRUPTED and not _state["interrupt_said"]:
        sys.stderr.write("\ninterrupted before any result was written; nothing was lost (a sweep keeps its finished "
                         "batches: rerun the command to resume).\n")
    return code if isinstance(code, int) else 0


if __name__ == "__main__":
    sys.exit(main())
