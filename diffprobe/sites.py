"""The site catalogue: every attention module of a denoiser, named in one vocabulary.

A *site* is one attention module of the denoiser (UNet or transformer) seen as an intervention
point. Sites are typed: their ``kind`` says what the attention mixes --

- ``self``: image tokens attend to image tokens (UNet ``attn1``, DiT self-attention);
- ``cross``: image tokens attend to text tokens (UNet ``attn2``, DeepFloyd IF added-KV attention,
  PixArt ``attn2``); the text keys/values come from projections of the prompt embedding only;
- ``joint``: MMDiT joint attention (SD3, FLUX double-stream blocks); text and image streams are
  projected separately (text K/V: ``add_k_proj``/``add_v_proj``) and attend together;
- ``single``: FLUX single-stream blocks; one projection over the concatenated [text, image]
  sequence, whose first ``text_len`` tokens are the text part of K/V.

Each kind is numbered from 0 in the *execution order of the forward pass* (down, mid, up blocks
for UNets; block order for transformers). This is the numbering of the paper "Precise Parameter
Localization for Textual Generation in Diffusion Models": SDXL cross 55-57 are
``up_blocks.0.attentions.2.transformer_blocks.{1,2,3}.attn2``. ``named_modules()`` registers
``up_blocks`` before ``mid_block``, so registration order would be wrong.

Selections are made in Python (``catalogue.select(kind="cross", block="up")``, ``catalogue[3:6]``)
or with one string grammar shared by the CLI (see :meth:`SiteCatalogue.parse`).
"""
from __future__ import annotations

import fnmatch
import re
from collections.abc import Iterable, Iterator, Sequence
from dataclasses import asdict, dataclass

from .errors import SiteError, did_you_mean

__all__ = ["Site", "SiteCatalogue", "KINDS"]

KINDS = ("self", "cross", "joint", "single")


@dataclass(frozen=True)
class Site:
    """One attention module of the denoiser.

    Attributes:
        index: position within its kind, in forward execution order (0-based).
        kind: ``self`` | ``cross`` | ``joint`` | ``single``.
        name: module path inside the denoiser, e.g. ``up_blocks.0.attentions.2.transformer_blocks.1.attn2``.
        block: coarse position: ``down`` | ``mid`` | ``up`` (UNets), ``transformer`` | ``single`` (DiTs).
        heads: number of attention heads.
        head_dim: size of one head.
        kv: names of the submodules that carry the text keys and values (empty for ``self``).
        kv_params: parameters of those submodules.
        text_prefix: True when the text tokens are a prefix of a shared K/V sequence (FLUX single).
    """

    index: int
    kind: str
    name: str
    block: str
    heads: int
    head_dim: int
    kv: tuple[str, ...]
    kv_params: int
    text_prefix: bool = False

    @property
    def label(self) -> str:
        """The short form used in specs and plots, e.g. ``cross:55``."""
        return f"{self.kind}:{self.index}"

    @property
    def carries_text(self) -> bool:
        return bool(self.kv)

    def to_dict(self) -> dict:
        d = asdict(self)
        d["kv"] = list(self.kv)
        return d

    def __str__(self) -> str:
        return f"{self.label} ({self.name})"


_RANGE = re.compile(r"^(\d+)(?:-(\d+))?$")


class SiteCatalogue(Sequence[Site]):
    """An ordered, immutable collection of sites with selection by attribute or string."""

    def __init__(self, sites: Iterable[Site]):
        self._sites = tuple(sites)

    # -- sequence protocol ---------------------------------------------------
    def __len__(self) -> int:
        return len(self._sites)

    def __iter__(self) -> Iterator[Site]:
        return iter(self._sites)

    def __getitem__(self, key):
        if isinstance(key, slice):
            return SiteCatalogue(self._sites[key])
        if isinstance(key, str):
            return self.by_name(key)
        return self._sites[key]

    def __repr__(self) -> str:
        counts = ", ".join(f"{k}={n}" for k, n in self.counts().items())
        return f"SiteCatalogue({len(self)} sites: {counts})"

    def _repr_html_(self) -> str:  # notebooks: a table of the sites (see diffprobe.display)
        from .display import catalogue_html

        return catalogue_html(self)

    # -- queries -------------------------------------------------------------
    def counts(self) -> dict[str, int]:
        out: dict[str, int] = {}
        for s in self._sites:
            out[s.kind] = out.get(s.kind, 0) + 1
        return out

    @property
    def kinds(self) -> tuple[str, ...]:
        return tuple(self.counts())

    @property
    def names(self) -> list[str]:
        return [s.name for s in self._sites]

    def by_name(self, name: str) -> Site:
        for s in self._sites:
            if s.name == name:
                return s
        raise SiteError(f"No site named {name!r}.{did_you_mean(name, self.names)}")

    def of_kind(self, kind: str) -> "SiteCatalogue":
        if kind not in self.kinds:
            raise SiteError(
                f"No {kind!r} sites in this model; it has {self._kinds_text()}.{did_you_mean(kind, self.kinds)}"
            )
        return SiteCatalogue(s for s in self._sites if s.kind == kind)

    def select(
        self,
        kind: str | None = None,
        block: str | None = None,
        indices: Iterable[int] | None = None,
        name: str | None = None,
    ) -> "SiteCatalogue":
        """Sites matching every given attribute; ``indices`` index within ``kind``, ``name`` is a glob."""
        pool = self.of_kind(kind) if kind is not None else self
        if block is not None:
            blocks = sorted({s.block for s in pool})
            if block not in blocks:
                raise SiteError(f"No block {block!r}; blocks here are {blocks}.{did_you_mean(block, blocks)}")
            pool = SiteCatalogue(s for s in pool if s.block == block)
        if indices is not None:
            if kind is None:
                raise SiteError("Indices are numbered within a kind: pass kind= as well, e.g. kind='cross'.")
            pool = SiteCatalogue(self._by_index(kind, list(indices)))
        if name is not None:
            pool = SiteCatalogue(self._by_glob(name, pool))
        return pool

    # -- string grammar ------------------------------------------------------
    def parse(self, spec: str | Sequence[str]) -> "SiteCatalogue":
        """Parse a site specification string into a selection (in catalogue order, no duplicates).

        Grammar: terms separated by whitespace, ``;`` or a comma before the next kind (``cross:9,cross:10``); a
        term is

        - ``KIND:all`` -- every site of a kind (``cross:all``);
        - ``KIND:I``, ``KIND:I-J``, ``KIND:I,J-K`` -- indices within a kind (``cross:55-57``);
        - ``KIND:GLOB`` -- module names matching a glob, within a kind (``cross:up_blocks.0.*``);
        - ``GLOB`` or an exact module name -- any kind (``up_blocks.0.*``);
        - ``all`` -- every site.
        """
        terms = [spec] if isinstance(spec, str) else list(spec)
        chosen: set[Site] = set()
        for term in (t for raw in terms for t in re.split(r"[;\s]+|,(?=[A-Za-z_]+:)", raw.strip()) if t):
            chosen.update(self._parse_term(term))
        if not chosen:
            raise SiteError(f"The site specification {spec!r} is empty; {self._grammar_hint()}")
        return SiteCatalogue(s for s in self._sites if s in chosen)

    def _parse_term(self, term: str) -> list[Site]:
        if term == "all":
            return list(self._sites)
        kind, sep, rest = term.partition(":")
        if not sep:
            return self._by_glob(term, self)
        if kind not in self.kinds:
            raise SiteError(
                f"Unknown site kind {kind!r} in {term!r}; this model has {self._kinds_text()}."
                + did_you_mean(kind, self.kinds)
            )
        if rest == "all":
            return list(self.of_kind(kind))
        parts = rest.split(",")
        if all(_RANGE.match(p) for p in parts):
            idx: list[int] = []
            for p in parts:
                a, b = _RANGE.match(p).groups()
                lo, hi = int(a), int(b if b is not None else a)
                if hi < lo:
                    raise SiteError(f"Range {p!r} in {term!r} runs backwards; write {hi}-{lo}.")
                idx.extend(range(lo, hi + 1))
            return self._by_index(kind, idx)
        return self._by_glob(rest, self.of_kind(kind))

    def _by_index(self, kind: str, indices: list[int]) -> list[Site]:
        pool = self.of_kind(kind)
        n = len(pool)
        bad = [i for i in indices if not 0 <= i < n]
        if bad:
            raise SiteError(
                f"{kind} site index {bad[0]} is out of range: this model has {n} {kind} sites, "
                f"valid indices are 0-{n - 1} (e.g. '{kind}:0-{n - 1}' or '{kind}:all')."
            )
        return [pool[i] for i in indices]

    def _by_glob(self, pattern: str, pool: Iterable[Site]) -> list[Site]:
        pool = list(pool)
        hits = [s for s in pool if fnmatch.fnmatchcase(s.name, pattern)]
        if not hits:
            names = [s.name for s in pool]
            raise SiteError(
                f"No site matches {pattern!r}.{did_you_mean(pattern, names)} {self._grammar_hint()}"
            )
        return hits

    def _kinds_text(self) -> str:
        return ", ".join(f"{n} {k} sites ({k}:0-{n - 1})" for k, n in self.counts().items())

    def _grammar_hint(self) -> str:
        """The selection grammar, with examples from this model's own sites."""
        counts = self.counts()
        kind = next((k for k in ("cross", "joint", "single") if k in counts), next(iter(counts), "cross"))
        last = counts.get(kind, 1) - 1
        first = self._sites[0].name.split(".") if self._sites else ["up_blocks", "0"]
        glob = ".".join(first[:2]) + ".*"
        return (
            f"this model has {self._kinds_text()}; write e.g. '{kind}:all', '{kind}:0-{min(2, last)}', "
            f"'{kind}:0,{last}' (one kind, a comma between indices), several selections separated by spaces, "
            f"or a module-name glob such as '{glob}'."
        )
