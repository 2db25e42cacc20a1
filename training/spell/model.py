"""Components of the spelling model: a character-aware tokenizer, a T5 text encoder, the UNet and the
scheduler, assembled into a STOCK diffusers ``IFPipeline`` (loads with ``DiffusionPipeline.from_pretrained``,
no custom code).

Tokenizer (``tokenizers`` WordPiece, wrapped in ``PreTrainedTokenizerFast``). The quoted word is spelled:

    'a red sign that says "Stop"'  ->  a red sign that says #1 ##s #2 ##t #3 ##o #4 ##p #end </s>

- ONE letter vocabulary ``##a`` .. ``##z`` shared by every position; the position is a separate marker token
  ``#1`` .. ``#8`` before each letter, and ``#end`` closes the word (so the encoder also knows its length).
  Letters after the 8th get no marker (they follow ``#8`` as further ``##x`` pieces).
- The markers are inserted by the normalizer with look-behind regexes (``(?<="[a-z]{k-1})(?=[a-z])`` -> `` #k``,
  applied for k = 8 .. 1), so the whole thing is a plain ``tokenizer.json``.
- Template words (``a``, ``red``, ``sign`` ...) are whole-word tokens and can never collide with the letters
  (``a`` vs ``##a``). Lower- and upper-case input give the same tokens (``Lowercase`` normalizer; IFPipeline
  lower-cases too). Punctuation other than ``"`` is dropped; an unknown word outside quotes is ``<unk>``.
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
    for w in words + MARKERS + [END] + ["##" + c for c in LETTERS]:
        seen.setdefault(w, None)
    return [PAD, EOS, UNK] + list(seen)


def build_tokenizer():
    from tokenizers import Regex, Tokenizer, normalizers, pre_tokenizers, processors
    from tokenizers.models import WordPiece
    from transformers import PreTrainedTokenizerFast

    vocab = {w: i for i, w in enumerate(vocabulary())}
    tok = Tokenizer(WordPiece(vocab=vocab, unk_token=UNK, max_input_chars_per_word=100))
    norm = [normalizers.Lowercase(), normalizers.Replace(Regex(r'[^a-z" ]'), " ")]
    for k in range(data.MAX_LETTERS, 0, -1):  # insert " #k" before the k-th letter after an opening quote
        norm.append(normalizers.Replace(Regex('(?<="[a-z]{%d})(?=[a-z])' % (k - 1)), f" #{k}"))
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


def bind_slots(text_encoder, tokenizer):
    """An experiment (eighteenth session, docs/model-card-spell.md), not the shipped pipeline: make
    ``text_encoder`` (this instance only) add its marker's embedding to each letter token's input embedding
    (``#2 ##a``: ``##a`` enters as E[##a] + E[#2]), so a letter carries its slot from the first layer on.
    The trained encoder leaves the slot out of the letter tokens' outputs; this puts it in."""
    vocab = tokenizer.get_vocab()
    letters = torch.tensor([vocab["##" + c] for c in LETTERS])
    markers = torch.tensor([vocab[m] for m in MARKERS])
    embed, forward = text_encoder.get_input_embeddings(), text_encoder.forward

    def bound(input_ids=None, attention_mask=None, **kw):
        before = torch.roll(input_ids, 1, 1)
        slotted = torch.isin(input_ids, letters) & torch.isin(before, markers)
        inputs = embed(input_ids) + slotted[..., None] * embed(before)
        return forward(inputs_embeds=inputs, attention_mask=attention_mask, **kw)

    text_encoder.forward = bound
    return text_encoder


# The UNet, the scheduler, the pipeline assembly and the IFPipeline-exact tokenization are glyph's (same UNet config,
# same schedule, same stock IFPipeline, same 77-token padding); only the tokenizer and the text encoder differ.
from training.glyph.model import (  # noqa: E402,F401  (re-exported for train/evaluate)
    assemble_pipeline, build_inference_scheduler, build_train_scheduler, build_unet, count_params, encode, preprocess,
    tokenize,
)
