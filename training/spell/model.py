"""Components of the spelling model: a character-aware tokenizer, a T5 text encoder, the UNet and the
scheduler, assembled into a STOCK diffusers ``IFPipeline`` (loads with ``DiffusionPipeline.from_pretrained``,
no custom code).

Tokenizer (``tokenizers`` WordPiece, wrapped in ``PreTrainedTokenizerFast``). The quoted word is spelled:

    'a red sign that says "Stop"'  ->  a red sign that says #1 #1s #2 #2t #3 #3o #4 #4p #end </s>

- Each letter is ONE token naming the letter AND its slot: ``#2t`` is "t" as the word's 2nd letter (``#1a`` ..
  ``#8z``, nineteenth session). The trained encoder, given one letter vocabulary ``##a`` .. ``##z`` shared by
  every slot and the slot only in a separate marker token, gave each letter the same output in every slot
  (docs/model-card-spell.md, eighteenth session: words came out with their letters in the wrong order).
  The marker ``#1`` .. ``#8`` still stands before each letter and ``#end`` closes the word (so the encoder also
  knows its length). Letters after the 8th follow ``#8x`` as ``##x`` pieces.
- The markers are inserted by the normalizer with look-behind regexes (``(?<="[a-z]{k-1})(?=[a-z])`` ->
  `` #k #k``, applied for k = 8 .. 1); WordPiece's longest match then reads ``#ks`` as one token, so the whole
  thing is a plain ``tokenizer.json``.
- Template words (``a``, ``red``, ``sign`` ...) are whole-word tokens and can never collide with the letters
  (``a`` vs ``#1a``). Lower- and upper-case input give the same tokens (``Lowercase`` normalizer; IFPipeline
  lower-cases too). Punctuation other than ``"`` is dropped; an unknown word outside quotes is ``<unk>``.
- The slot-letter tokens come last in the vocabulary, so a text encoder trained before them (step 17000 and
  earlier) loads with its ids unchanged: ``load_text_encoder_state`` gives each new token the embedding
  E[``##x``] + E[``#k``] (what the eighteenth session's controlled test fed the encoder).
"""
from __future__ import annotations

import torch

from diffprobe.zoo import spell_data as data
from training.glyph import model as glyph_model

MAX_LENGTH = 77  # IFPipeline.encode_prompt always pads/truncates to 77 tokens
PAD, EOS, UNK = "<pad>", "</s>", "<unk>"
LETTERS = "abcdefghijklmnopqrstuvwxyz"
MARKERS = [f"#{k}" for k in range(1, data.MAX_LETTERS + 1)]
END = "#end"
#: one token per (slot, letter), after everything else in the vocabulary (see the module's doc)
SLOT_LETTERS = [f"#{k}{c}" for k in range(1, data.MAX_LETTERS + 1) for c in LETTERS]

#: the shipped glyph UNet's config, unchanged: 32x128 -> 16x64 -> 8x32 -> 4x16 -> 2x8, so the 2x8 bottleneck has one
#: column per letter position, and glyph's weights can warm-start this one (--unet-from; convolutions do not care
#: about the image width, and IFPipeline takes height=32, width=128 at call time)
UNET_CONFIG = glyph_model.UNET_CONFIG

TEXT_CONFIG = dict(
    d_model=128,
    d_kv=32,
    d_ff=512,
    num_layers=3,
    num_heads=4,
    relative_attention_num_buckets=32,  # distances 0..7 get exact buckets: marker -> letter is distance 1
    relative_attention_max_distance=64,
    dropout_rate=0.0,
    feed_forward_proj="gated-gelu",
    initializer_factor=1.0,  # token embeddings start at std 1.0: tokens stay far apart
    is_encoder_decoder=False,
    use_cache=False,
    pad_token_id=0,
    eos_token_id=1,
    decoder_start_token_id=0,
)

def vocabulary() -> list[str]:
    words: list[str] = []
    for t in data.TEMPLATES:
        words += t.name.split()
    words += "that says in letters".split() + list(data.FONT_NAMES)
    seen: dict[str, None] = {}
    for w in words + MARKERS + [END] + ["##" + c for c in LETTERS] + SLOT_LETTERS:
        seen.setdefault(w, None)
    return [PAD, EOS, UNK] + list(seen)


def build_tokenizer():
    from tokenizers import Regex, Tokenizer, normalizers, pre_tokenizers, processors
    from tokenizers.models import WordPiece
    from transformers import PreTrainedTokenizerFast

    vocab = {w: i for i, w in enumerate(vocabulary())}
    tok = Tokenizer(WordPiece(vocab=vocab, unk_token=UNK, max_input_chars_per_word=100))
    norm = [normalizers.Lowercase(), normalizers.Replace(Regex(r'[^a-z" ]'), " ")]
    for k in range(data.MAX_LETTERS, 0, -1):  # insert " #k #k" before the k-th letter after an opening quote
        norm.append(normalizers.Replace(Regex('(?<="[a-z]{%d})(?=[a-z])' % (k - 1)), f" #{k} #{k}"))
    norm.append(normalizers.Replace(Regex(r'"(?= #1)'), " "))  # opening quote: gone (the markers say it)
    norm.append(normalizers.Replace('"', f" {END} "))  # closing quote: end of the word
    tok.normalizer = normalizers.Sequence(norm)
    tok.pre_tokenizer = pre_tokenizers.WhitespaceSplit()
    tok.post_processor = processors.TemplateProcessing(
        single=f"$A {EOS}", pair=f"$A {EOS} $B {EOS}", special_tokens=[(EOS, vocab[EOS])]
    )
    return PreTrainedTokenizerFast(
        tokenizer_object=tok, pad_token=PAD, eos_token=EOS, unk_token=UNK, model_max_length=MAX_LENGTH
    )


def build_text_encoder(vocab_size: int):
    from transformers import T5Config, T5EncoderModel

    return T5EncoderModel(T5Config(vocab_size=vocab_size, **TEXT_CONFIG))


def load_text_encoder_state(text_encoder, state: dict) -> None:
    """Load ``state`` into ``text_encoder``; a state saved before the slot-letter tokens (fewer embedding rows)
    keeps its rows, and each slot-letter token it lacks starts as E[``##x``] + E[``#k``] of that state (ids from
    ``vocabulary()``, the tokenizer's)."""
    vocab, state = {w: i for i, w in enumerate(vocabulary())}, dict(state)
    for key in ("shared.weight", "encoder.embed_tokens.weight"):
        old = state.get(key)
        if old is None or len(old) >= len(vocab):
            continue
        grown = torch.zeros(len(vocab), old.shape[1], dtype=old.dtype)
        grown[:len(old)] = old
        for token in SLOT_LETTERS:
            if vocab[token] >= len(old):
                grown[vocab[token]] = old[vocab["##" + token[2]]] + old[vocab[token[:2]]]
        state[key] = grown
    text_encoder.load_state_dict(state)


# The UNet, the scheduler, the pipeline assembly and the IFPipeline-exact tokenization are glyph's (same UNet config,
# same schedule, same stock IFPipeline, same 77-token padding); only the tokenizer and the text encoder differ.
from training.glyph.model import (  # noqa: E402,F401  (re-exported for train/evaluate)
    assemble_pipeline, build_inference_scheduler, build_train_scheduler, build_unet, count_params, encode, preprocess,
    tokenize,
)
