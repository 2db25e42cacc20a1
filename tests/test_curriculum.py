"""training/curriculum.py: the stage of a step, the trainer calls it makes across stage ends, and a real run of
the spell trainer through three tiny stages."""
from __future__ import annotations

import json
import subprocess
import sys

import pytest
import torch

from diffprobe.errors import SpecError
from training import curriculum


def width(args: str) -> int:
    """The curriculum stage (0-3) a plan entry trains: a stage's own arguments, or those with more (a ramp);
    stage 4 (the full data) names no font and no word length."""
    for i in (0, 1, 2):  # stages 1 and 2 begin with stage 3's "--fonts mono": the narrower first
        if args == curriculum.STAGES[i] or args.startswith(curriculum.STAGES[i] + " "):
            return i
    assert "--fonts" not in args and "--max-letters" not in args, args
    return 3


def test_each_step_falls_in_one_stage_whose_end_is_after_it():
    assert curriculum.stage("mmdit", 0) == (0, 13500, curriculum.STAGES[0])
    assert curriculum.stage("mmdit", 13499)[0] == 0
    assert curriculum.stage("mmdit", 13500)[:2] == (1, 20400)
    assert curriculum.stage("mmdit", 27284) == (3, None, "")
    assert curriculum.stage("spell", 7646) == (0, 8000, curriculum.FIRST_LETTERS)
    assert curriculum.stage("spell", 8000) == (1, 8600, curriculum.STILL_LETTERS)
    assert curriculum.stage("spell", 8600) == (2, 10000, curriculum.HALF_JITTER)
    assert curriculum.stage("spell", 10000) == (3, 12800, curriculum.STAGES[0])
    assert curriculum.stage("spell", 12800) == (4, 14500, curriculum.STAGES[1])
    assert curriculum.stage("spell", 14500) == (5, 15100, curriculum.WORDS_RED_SIGN)
    assert curriculum.stage("spell", 15100) == (6, 15700, curriculum.STILL_WORDS)
    assert curriculum.stage("spell", 15700) == (7, 17000, curriculum.HALF_JITTER_WORDS)
    assert curriculum.stage("spell", 17000) == (8, 17300, curriculum.WORDS_RED_SIGN)  # slot-letter tokens from here
    assert curriculum.stage("spell", 17300) == (9, 17700, curriculum.STILL_WORDS)
    assert curriculum.stage("spell", 17700) == (10, 18400, curriculum.HALF_JITTER_WORDS)
    assert curriculum.stage("spell", 18400) == (11, 18700, curriculum.LONG_RED_SIGN)
    assert curriculum.stage("spell", 18700) == (12, 19100, curriculum.STILL_LONG)
    assert curriculum.stage("spell", 19100) == (13, 19700, curriculum.HALF_JITTER_LONG)
    assert curriculum.stage("spell", 19700) == (14, 20000, curriculum.FACES_RED_SIGN)
    assert curriculum.stage("spell", 20000) == (15, 20400, curriculum.STILL_FACES)  # the snapshot's step
    assert curriculum.stage("spell", 20400) == (16, 22400, curriculum.HALF_JITTER_FACES)
    assert curriculum.stage("spell", 22400) == (17, 23600, curriculum.ANNEAL_FACES)
    assert curriculum.stage("spell", 23600) == (18, None, curriculum.LOW_RATE_FACES)  # the shipped weights' step
    assert "--jitter-frac 0.5" in curriculum.HALF_JITTER_FACES and "--fonts" not in curriculum.HALF_JITTER_FACES
    for model, plan in curriculum.PLANS.items():
        ends = [end for end, _ in plan]
        assert ends[-1] is None and ends[:-1] == sorted(ends[:-1]), model
        widths = [width(a) for _, a in plan]  # which of the 4 stages each is (its arguments, or those and more)
        assert widths == sorted(widths) and set(widths) == {0, 1, 2, 3}, model  # each in turn, never back
    with pytest.raises(SpecError, match="past the last stage"):
        curriculum.stage("spell", 50, plan=((10, ""), (20, "")))


def test_spell_anneals_the_rate_then_goes_on_at_the_annealed_rate():
    """The anneal stage is the stage before it plus a cosine decay of the rate: flat (1x) up to step 22400, 0.1x
    from 23600, falling in between; the stage after it goes on at 0.1x, flat."""
    from training.spell.train import lr_factor, parse_args

    end = curriculum.PLANS["spell"][-3][0]  # where the anneal starts
    assert curriculum.PLANS["spell"][-2] == (23600, curriculum.ANNEAL_FACES)
    assert curriculum.ANNEAL_FACES.startswith(curriculum.HALF_JITTER_FACES + " ")
    args = parse_args([*curriculum.RECIPES["spell"].split(), *curriculum.ANNEAL_FACES.split()])
    assert args.steps == 23600 and args.jitter_frac == 0.5
    f = [lr_factor(s, args, start_step=0) for s in (end - 1, end + 600, 23599, 23600, 30000)]
    assert f[0] == 1.0 and 0.5 < f[1] < 0.6 and 0.1 < f[2] < 0.1001 and f[3] == f[4] == pytest.approx(0.1)
    low = parse_args([*curriculum.RECIPES["spell"].split(), *curriculum.LOW_RATE_FACES.split()])
    assert curriculum.LOW_RATE_FACES.startswith(curriculum.HALF_JITTER_FACES + " ")
    rates = [(low.lr * lr_factor(s, low, start_step=0), low.text_lr * lr_factor(s, low, start_step=0))
             for s in (23600, 60000)]
    assert rates == [pytest.approx((args.lr * 0.1, args.text_lr * 0.1))] * 2


def test_stages_prints_one_line_per_stage_for_the_gpu_script():
    for model, plan in curriculum.PLANS.items():
        out = subprocess.run([sys.executable, "-m", "training.curriculum", model, "--stages"], capture_output=True,
                             text=True, check=True, cwd=curriculum.ROOT).stdout
        assert out.split("\n")[:-1] == [a for _, a in plan]  # (the last stage is the empty line)
        last = plan[-2][0]  # the step the last stage starts at; the step before it is in the stage before
        at = [subprocess.run([sys.executable, "-m", "training.curriculum", model, "--stage-of", str(s)],
                             capture_output=True, text=True, check=True, cwd=curriculum.ROOT).stdout
              for s in (last - 1, last)]
        assert at == [f"{len(plan) - 2}\n", f"{len(plan) - 1}\n"]


def test_spell_stage_0_draws_one_template_unjittered_and_its_arguments_are_checked():
    from diffprobe.zoo import spell_data
    from training import runargs
    from training.spell.train import parse_args

    args = parse_args(["--batch", "32", *curriculum.FIRST_LETTERS.split()])
    assert (args.batch, runargs.templates(args), args.no_jitter) == (32, (0,), True)
    images, prompts, samples = spell_data.sample_batch(0, 5, 16, 1.0, fonts=("mono",), max_letters=1, templates=(0,),
                                                       jitter=False)
    assert {(s.template, s.font, len(s.word)) for s in samples} == {(0, "mono", 1)}
    assert all(s == spell_data.canonical(0, s.word, "mono") for s in samples)  # the template's own colours and place
    assert len({s.word for s in samples}) > 5
    jittered = spell_data.sample_batch(0, 5, 16, 1.0, fonts=("mono",), max_letters=1, templates=(0, 3))[2]
    assert {s.template for s in jittered} == {0, 3} and any(s != spell_data.canonical(s.template, s.word) for s in jittered)
    for bad, match in (("12", "choose indices 0 to 11"), ("a", "comma-separated indices"),
                       ("1", "held out")):  # (1, mono) is a held-out combination
        with pytest.raises(SpecError, match=match):
            runargs.check(parse_args(["--templates", bad, "--fonts", "mono"]))


def test_the_jitter_ramp_jitters_its_share_of_samples_and_leaves_the_old_batches_as_they_were():
    from diffprobe.zoo import spell_data
    from training import runargs
    from training.spell.train import parse_args

    def canonical_share(jitter):
        samples = spell_data.sample_batch(0, 3, 64, 1.0, fonts=("mono",), max_letters=1, jitter=jitter)[2]
        return sum(s == spell_data.canonical(s.template, s.word, "mono") for s in samples) / len(samples)

    assert canonical_share(0.0) == 1.0 and canonical_share(1.0) == 0.0
    assert 0.3 < canonical_share(0.5) < 0.7
    for old, new in ((True, 1.0), (False, 0.0)):  # no extra draw at 0 or 1: runs from before the ramp resume alike
        assert spell_data.sample_batch(0, 3, 8, jitter=old)[1:] == spell_data.sample_batch(0, 3, 8, jitter=new)[1:]
    assert runargs.jitter(parse_args(curriculum.HALF_JITTER.split())) == 0.5
    assert runargs.jitter(parse_args(["--no-jitter"])) == 0.0 and runargs.jitter(parse_args([])) == 1.0
    for argv, match in ((["--jitter-frac", "1.5"], "0 to 1"), (["--no-jitter", "--jitter-frac", "0.5"], "give one")):
        with pytest.raises(SpecError, match=match):
            runargs.check(parse_args(argv))
    with pytest.raises(SpecError, match="share of jittered samples"):
        spell_data.sample_batch(0, 3, 8, jitter=-0.1)


def fake_trainer(out, steps_taken):
    """A trainer that takes ``steps_taken`` steps (or stops at --until / --steps) and checkpoints the step."""
    def main(argv):
        def value(flag, default=None):  # the last one given, as argparse reads it
            return int(argv[len(argv) - argv[::-1].index(flag)]) if flag in argv else default

        if "--resume" in argv:
            step = torch.load(out / "ckpt.pt")["step"]
        else:
            step = json.loads((curriculum.SNAPSHOTS["spell"] / "train_state.json").read_text())["step"]
        end = min(value("--until", 10**9), value("--steps", 10**9))
        torch.save({"step": min(step + steps_taken, max(step, end))}, out / "ckpt.pt")
    return main


def test_a_run_moves_to_the_next_stage_at_each_end_and_stops_when_no_step_is_taken(tmp_path):
    start = json.loads((curriculum.SNAPSHOTS["spell"] / "train_state.json").read_text())["step"]
    plan = tuple(zip((start + 2, start + 3, start + 5, None), curriculum.STAGES))
    ran = curriculum.run("spell", tmp_path, minutes=5, trainer_args=["--steps", str(start + 6), "--fonts", "sans"],
                         plan=plan, main=fake_trainer(tmp_path, steps_taken=10))
    assert [a[2:4] for a in ran] == [["--init-from", str(curriculum.SNAPSHOTS["spell"])]] + [["--resume", "--batch"]] * 4
    assert [a[a.index("--until") + 1] if "--until" in a else None for a in ran] == \
        [str(start + 2), str(start + 3), str(start + 5), None, None]
    assert "--max-letters 1" in " ".join(ran[0]) and "--max-letters 3" in " ".join(ran[1])
    assert "--max-letters" not in " ".join(ran[3])
    assert all(a[-2:] == ["--fonts", "sans"] for a in ran)  # the caller's arguments come last: they win
    assert all(" ".join(curriculum.RECIPES["spell"].split()) in " ".join(a) for a in ran)
    assert torch.load(tmp_path / "ckpt.pt")["step"] == start + 6


def test_the_spell_trainer_runs_through_three_stages(tmp_path):
    start = json.loads((curriculum.SNAPSHOTS["spell"] / "train_state.json").read_text())["step"]
    args = ["--batch", "2", "--steps", str(start + 3), "--no-bf16", "--threads", "1", "--probe-every", "1000",
            "--ckpt-every", "1000"]
    plan = ((start + 1, curriculum.FIRST_LETTERS), (start + 2, curriculum.STAGES[0]), (None, curriculum.STAGES[2]))
    ran = curriculum.run("spell", tmp_path, minutes=10, trainer_args=args, plan=plan)
    assert len(ran) == 4  # three stages of one step, then a call that takes none (--steps reached)
    rows = (tmp_path / "loss.csv").read_text().split()[1:]
    assert [int(r.split(",")[0]) for r in rows] == [start + 1, start + 2, start + 3]
    recipe = json.loads((tmp_path / "train.json").read_text())["recipe"]
    assert (recipe["fonts"], recipe["max_letters"], recipe["lr"], recipe["text_lr"]) == ("mono", 8, 5e-4, 3e-4)
    probes = (tmp_path / "probe.csv").read_text().splitlines()
    assert "single_letter_acc" in probes[0] and len(probes) == 1 + 3  # a probe at each stage end


def test_a_raw_snapshot_holds_the_runs_raw_weights_and_says_so(tmp_path):
    """--snapshot RUN --raw-snapshot: ckpt.pt's weights (not the EMA pipeline/) as a loadable snapshot."""
    import shutil

    from diffusers import UNet2DConditionModel

    from training.spell import train

    snap = curriculum.SNAPSHOTS["spell"]
    run = tmp_path / "run"
    shutil.copytree(snap, run / "pipeline")
    unet = {k: v.float() for k, v in UNet2DConditionModel.from_pretrained(snap / "unet").state_dict().items()}
    unet["conv_out.bias"] = unet["conv_out.bias"] + 0.5  # the raw weights differ from the EMA's
    te = train.model.build_text_encoder(len(train.model.build_tokenizer()))
    train.load_from(snap, train.model.build_unet(), te)
    step = json.loads((snap / "train_state.json").read_text())["step"]
    torch.save({"unet": unet, "te": te.state_dict(), "step": step}, run / "ckpt.pt")
    train.main(["--snapshot", str(run), "--raw-snapshot", "--to", str(tmp_path / "snap")])
    got = UNet2DConditionModel.from_pretrained(tmp_path / "snap" / "unet").state_dict()
    assert all(torch.equal(got[k], v.half()) for k, v in unet.items())
    state = json.loads((tmp_path / "snap" / "train_state.json").read_text())
    assert state["step"] == step and state["weights"].startswith("raw")
    torch.save({"unet": unet, "te": te.state_dict(), "step": step + 1}, run / "ckpt.pt")
    with pytest.raises(RuntimeError, match="ckpt.pt is at step"):  # a checkpoint newer than its pipeline/
        train.main(["--snapshot", str(run), "--raw-snapshot", "--to", str(tmp_path / "snap2")])


def test_the_spell_letter_test_trains_on_the_data_it_names_and_only_measures_with_no_steps(monkeypatch):
    from diffprobe.zoo import spell_data
    from training.spell import letter_test

    rows = list(letter_test.run(curriculum.SNAPSHOTS["spell"], steps=0, batch=2))
    assert len(rows) == 1 and rows[0][0] == 0 and 0.0 <= rows[0][1] <= 1.0 and rows[0][2] >= 0.0
    asked, original = [], spell_data.sample_batch

    def sample_batch(*args, **kw):
        asked.append((kw["templates"], kw["jitter"]))
        return original(*args, **kw)

    monkeypatch.setattr(letter_test.data, "sample_batch", sample_batch)
    for templates, jitter, drawn in ((None, False, []), ("all", False, [(None, False)]), ((0, 3), True, [((0, 3), True)])):
        asked.clear()
        rows = list(letter_test.run(curriculum.SNAPSHOTS["spell"], steps=1, every=1, batch=2, templates=templates,
                                    jitter=jitter))
        assert [r[0] for r in rows] == [0, 1] and asked == drawn  # None: the red sign's own renders, no sampler
    monkeypatch.setattr(letter_test, "run", lambda *a, **k: pytest.fail("bad --templates reached the model"))
    for bad, match in (("12", "choose indices 0 to 11"), ("a", "comma-separated indices"), ("1", "held out")):
        with pytest.raises(SpecError, match=match):
            letter_test.main(["--templates", bad, "--steps", "0"])


def test_the_spell_letter_test_on_words_trains_on_short_words_and_scores_each_slot(monkeypatch):
    from diffprobe.zoo import spell_data
    from training.spell import letter_test

    asked, original = [], spell_data.sample_batch

    def sample_batch(*args, **kw):
        asked.append((args[3], kw["max_letters"], kw["templates"], kw["jitter"]))
        return original(*args, **kw)

    monkeypatch.setattr(letter_test.data, "sample_batch", sample_batch)
    rows = list(letter_test.run(curriculum.SNAPSHOTS["spell"], steps=1, every=1, batch=2, max_letters=3))
    assert [r[0] for r in rows] == [0, 1] and asked == [(0.5, 3, (0,), False)]  # the red sign alone, unjittered
    for _, slots, mean, _ in rows:
        assert len(slots) == 3 and all(0.0 <= a <= 1.0 for a in slots)
        assert mean == pytest.approx(sum(slots) / 3, abs=1e-4)
    prompts, noise, variants = letter_test.word_slots(0, 3)
    assert len(prompts) == len(noise) == 64 and all(len(per) == 3 for per in variants)  # 3-letter words: 3 slots
    word = prompts[0].split('"')[1]
    renders, true = variants[0][1]  # slot 2 of the first word: its 26 variants, the true one among them
    assert renders.shape[0] == 26 and letter_test.LETTERS[true] == word[1]
    clean = spell_data.render(spell_data.canonical(0, word, "mono"))
    assert torch.equal(renders[true], spell_data.to_tensor([clean])[0])
