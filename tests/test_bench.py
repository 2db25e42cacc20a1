"""Prompt sets: SimpleBench/CreativeBench-style pairs, the generic builder, JSONL in and out."""
from __future__ import annotations

import dataclasses
import json

import pytest

from diffprobe.bench import (
    DEFAULT_BUCKETS,
    SIMPLE_TEMPLATE,
    SLOT,
    PromptPair,
    creative_bench,
    creative_templates,
    frequency_words,
    read_jsonl,
    simple_bench,
    template_pairs,
    write_jsonl,
)
from diffprobe.errors import DiffprobeError, SpecError


def test_simple_bench_pairs_are_sign_prompts_with_distinct_words():
    pairs = simple_bench(12, seed=3)
    assert len(pairs) == 12
    for pair in pairs:
        assert pair.source_prompt == SIMPLE_TEMPLATE.replace(SLOT, pair.source_text)
        assert pair.target_prompt == f'A sign that says "{pair.target_text}".'
        assert pair.source_text != pair.target_text
        for word in (pair.source_text, pair.target_text):
            assert word.isascii() and word.isalpha() and 3 <= len(word) <= 8
    assert [p.seed for p in pairs] == list(range(3, 15))


def test_simple_bench_draws_from_each_bucket_in_order():
    pairs = simple_bench(8, seed=0)  # 2 per default bucket, grouped by bucket
    for i, (start, stop) in enumerate(DEFAULT_BUCKETS):
        words = set(frequency_words(start, stop))
        for pair in pairs[2 * i : 2 * i + 2]:
            assert pair.source_text in words and pair.target_text in words
    assert [len(simple_bench(n, buckets=[(0, 500), (500, 2000)])) for n in (1, 3)] == [1, 3]


def test_benches_are_deterministic_for_a_seed():
    assert simple_bench(6, seed=1) == simple_bench(6, seed=1)
    assert simple_bench(6, seed=1) != simple_bench(6, seed=2)
    assert creative_bench(5, seed=4) == creative_bench(5, seed=4)


def test_frequency_words_are_ranked_and_filtered():
    common = frequency_words(0, 200)
    assert "the" in common and "that" in common
    assert all(w.isascii() and w.isalpha() and 3 <= len(w) <= 8 for w in common)
    assert not set(common) & set(frequency_words(200, 400))
    with pytest.raises(SpecError, match="start < stop"):
        frequency_words(10, 5)


def test_creative_templates_are_ours_and_well_formed():
    templates = creative_templates()
    assert len(templates) >= 50
    assert len(set(templates)) == len(templates)
    assert all(t.count(SLOT) == 1 for t in templates)
    pairs = creative_bench(60, seed=0)
    used = {p.source_prompt.replace(f'"{p.source_text}"', '"{text}"') for p in pairs}
    assert len(used) == 60  # 60 <= number of templates: each used once before any repeats
    assert all(p.source_text != p.target_text for p in pairs)


def test_template_pairs_generic_builder():
    pairs = template_pairs(["A {text} mug", "The word {text} in neon"], ["alpha", "beta", "gamma"], 7, seed=5)
    assert len(pairs) == 7
    for p in pairs:
        assert p.source_text != p.target_text
        assert p.target_prompt == p.source_prompt.replace(p.source_text, p.target_text)
    assert [p.seed for p in pairs] == list(range(5, 12))
    assert template_pairs(["{text}"], ["ab", "cd"], 3) == template_pairs(["{text}"], ["ab", "cd"], 3)


@pytest.mark.parametrize(
    ("templates", "words", "n", "match"),
    [
        ([], ["a", "b"], 2, "no templates"),
        (["no slot here"], ["a", "b"], 2, "exactly one"),
        (["{text} and {text}"], ["a", "b"], 2, "exactly one"),
        (["{text}"], ["only"], 2, "two distinct words"),
        (["{text}"], ["same", "same"], 2, "two distinct words"),
        (["{text}"], ["a", "b"], 0, "1 <= n <= 100,000"),
        ("{text}", ["a", "b"], 1, "not a single string"),
    ],
)
def test_template_pairs_refuses_bad_input(templates, words, n, match):
    with pytest.raises(SpecError, match=match):
        template_pairs(templates, words, n)


def test_prompt_pair_is_frozen_and_validated():
    pair = PromptPair("A sign that says \"a\".", "A sign that says \"b\".", "a", "b")
    assert pair.seed == 0
    with pytest.raises(dataclasses.FrozenInstanceError):
        pair.seed = 1
    with pytest.raises(SpecError, match="source_prompt"):
        PromptPair("", "x", "a", "b")
    with pytest.raises(SpecError, match="seed"):
        PromptPair("x", "y", "a", "b", seed=-1)
    with pytest.raises(SpecError, match="seed"):
        PromptPair("x", "y", "a", "b", seed=True)


def test_jsonl_round_trip(tmp_path):
    german = PromptPair('Ein Schild: "Grüße"', 'Ein Schild: "Straße"', "Grüße", "Straße", 9)
    pairs = simple_bench(4, seed=2) + [german]
    path = tmp_path / "pairs.jsonl"
    write_jsonl(pairs, path)
    assert read_jsonl(path) == pairs
    path.write_text(path.read_text() + "\n\n")  # trailing blank lines are fine
    assert read_jsonl(path) == pairs


def test_jsonl_seed_is_optional(tmp_path):
    path = tmp_path / "p.jsonl"
    row = {"source_prompt": "x a", "target_prompt": "x b", "source_text": "a", "target_text": "b"}
    path.write_text(json.dumps(row))
    assert read_jsonl(path) == [PromptPair("x a", "x b", "a", "b", 0)]


@pytest.mark.parametrize(
    ("lines", "match"),
    [
        (['{"source_prompt": "x a", "target_prompt": "x b", "source_text": "a"}'],
         r":1: missing key 'target_text'"),
        (["", "{not json"], r":2: not valid JSON"),
        (['{"source_prompt": "x", "target_prompt": "y", "source_text": "a", "target_text": "b", "sede": 1}'],
         r":1: unknown key 'sede'. Did you mean 'seed'"),
        (['["a", "b"]'], r":1: .*JSON object"),
        (['{"source_prompt": "x", "target_prompt": "y", "source_text": "a", "target_text": "b", "seed": "1"}'],
         r":1: PromptPair.seed"),
        (["", "  "], "holds no prompt pairs"),
    ],
)
def test_jsonl_errors_name_the_line(tmp_path, lines, match):
    path = tmp_path / "bad.jsonl"
    path.write_text("\n".join(lines) + "\n")
    with pytest.raises(SpecError, match=match) as info:
        read_jsonl(path)
    assert isinstance(info.value, DiffprobeError)


def test_jsonl_missing_file_and_empty_write(tmp_path):
    with pytest.raises(SpecError, match="does not exist"):
        read_jsonl(tmp_path / "absent.jsonl")
    with pytest.raises(SpecError, match="empty"):
        write_jsonl([], tmp_path / "out.jsonl")
    with pytest.raises(SpecError, match="PromptPair"):
        write_jsonl([{"source_prompt": "x"}], tmp_path / "out.jsonl")
