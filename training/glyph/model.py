"""Building the glyph model's components: word-level tokenizer, T5 text encoder, UNet and scheduler,
assembled into a stock diffusers ``IFPipeline`` (pixel space, no VAE, no safety checker / watermarker)."""
from __future__ import annotations

import torch

from diffprobe.zoo.glyph import data

MAX_LENGTH = 77  # IFPipeline.encode_prompt always pads/truncates to 77 tokens
PAD, EOS, UNK = "<pad>", "</s>", "<unk>"

UNET_CONFIG = dict(
    sample_size=data.HEIGHT,  # IFPipeline uses sample_size for height and width: pass height=32, width=96
    in_channels=3,
    out_channels=6,  # IFPipeline splits 6 channels into (prediction, variance); the variance half is unused
    # 32x96 -> 16x48 -> 8x24 -> 4x12 -> 2x6. Attention (self + cross) at 8x24, 4x12, 2x6 and in the mid block.
    # The 2x6 bottleneck matters: a conv net from pure noise only knows *where* it is through zero padding, and
    # the word -> glyph layout is position-dependent; at 2x6 every cell touches a border (about one letter per column).
    down_block_types=("DownBlock2D", "DownBlock2D", "CrossAttnDownBlock2D", "CrossAttnDownBlock2D", "CrossAttnDownBlock2D"),
    up_block_types=("CrossAttnUpBlock2D", "CrossAttnUpBlock2D", "CrossAttnUpBlock2D", "UpBlock2D", "UpBlock2D"),
    mid_block_type="UNetMidBlock2DCrossAttn",
    block_out_channels=(32, 64, 96, 128, 128),
    layers_per_block=(1, 1, 1, 1, 2),
    transformer_layers_per_block=1,
    attention_head_dim=4,  # diffusers: this is the number of heads
    cross_attention_dim=128,
    norm_num_groups=16,
    act_fn="silu",
    flip_sin_to_cos=True,
    freq_shift=0,
)

TEXT_CONFIG = dict(
    d_model=128,
    d_kv=32,
    d_ff=512,
    num_layers=2,
    num_heads=4,
    relative_attention_num_buckets=32,
    relative_attention_max_distance=64,
    dropout_rate=0.0,
    feed_forward_proj="gated-gelu",
    initializer_factor=1.0,  # token embeddings start at std 1.0: words stay far apart
    is_encoder_decoder=False,
    use_cache=False,
    pad_token_id=0,
    eos_token_id=1,
    decoder_start_token_id=0,
)

SCHEDULER_CONFIG = dict(
    num_train_timesteps=1000,
    beta_schedule="squaredcos_cap_v2",
    prediction_type="v_prediction",
)


SPELL = False  # sign words are spelled out letter by letter (WordPiece pieces); False: one token per sign word
LETTERS = "abcdefghijklmnopqrstuvwxyz"


def vocabulary(spell: bool | None = None) -> list[str]:
    """Tokens: specials, every word of the templates and the prompt frame, then either the letters (first
    letter ``s``, continuation ``##t``) or the sign words (lower-case)."""
    spell = SPELL if spell is None else spell
    words: list[str] = []
    for t in data.TEMPLATES:
        words += t.name.split()
    words += "that says".split()
    if spell:
        words += list(LETTERS) + ["##" + c for c in LETTERS]
    else:
        words += [w.lower() for w in data.WORDS]
    seen: dict[str, None] = {}
    for w in words:
        seen.setdefault(w, None)
    return [PAD, EOS, UNK] + list(seen)


def build_tokenizer(spell: bool | None = None):
    """A tokenizer made with the ``tokenizers`` library: template words are one token each; with ``spell`` the
    sign word (any word not in the template vocabulary) is split into letters by WordPiece (``stop`` ->
    ``s ##t ##o ##p``), otherwise every sign word is one token (WordLevel).

    Lower-cases (as IFPipeline does anyway), drops quotes and punctuation, splits on whitespace and appends
    ``</s>``; anything else maps to ``<unk>``."""
    from tokenizers import Regex, Tokenizer, normalizers, pre_tokenizers, processors
    from tokenizers.models import WordLevel, WordPiece
    from transformers import PreTrainedTokenizerFast

    spell = SPELL if spell is None else spell
    vocab = {w: i for i, w in enumerate(vocabulary(spell))}
    if spell:
        tok = Tokenizer(WordPiece(vocab=vocab, unk_token=UNK, max_input_chars_per_word=100))
    else:
        tok = Tokenizer(WordLevel(vocab=vocab, unk_token=UNK))
    tok.normalizer = normalizers.Sequence(
        [normalizers.Lowercase(), normalizers.Replace(Regex(r"[^a-z0-9<>/ ]"), " ")]
    )
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


def build_unet():
    from diffusers import UNet2DConditionModel

    return UNet2DConditionModel(**UNET_CONFIG)


def build_train_scheduler():
    from diffusers import DDPMScheduler

    return DDPMScheduler(**SCHEDULER_CONFIG)


def build_inference_scheduler():
    from diffusers import DPMSolverMultistepScheduler

    return DPMSolverMultistepScheduler(**SCHEDULER_CONFIG)


def assemble_pipeline(unet, text_encoder, tokenizer, scheduler=None):
    from diffusers import IFPipeline

    return IFPipeline(
        tokenizer=tokenizer,
        text_encoder=text_encoder,
        unet=unet,
        scheduler=scheduler or build_inference_scheduler(),
        safety_checker=None,
        feature_extractor=None,
        watermarker=None,
        requires_safety_checker=False,
    )


def preprocess(prompts: list[str]) -> list[str]:
    """The text preprocessing IFPipeline applies with clean_caption=False."""
    return [p.lower().strip() for p in prompts]


def tokenize(tokenizer, prompts: list[str]):
    """Token ids and mask exactly as IFPipeline.encode_prompt makes them."""
    t = tokenizer(
        preprocess(prompts), padding="max_length", max_length=MAX_LENGTH, truncation=True,
        add_special_tokens=True, return_tensors="pt",
    )
    return t.input_ids, t.attention_mask


def encode(text_encoder, tokenizer, prompts: list[str]) -> torch.Tensor:
    ids, mask = tokenize(tokenizer, prompts)
    return text_encoder(ids.to(text_encoder.device), attention_mask=mask.to(text_encoder.device))[0]


def count_params(module) -> int:
    return sum(p.numel() for p in module.parameters())


def cross_attention_sites(unet) -> list[str]:
    """Names of the cross-attention modules (attn2) in execution order: down, mid, up."""
    names = [n for n, _ in unet.named_modules() if n.endswith("attn2")]
    order = {"down_blocks": 0, "mid_block": 1, "up_blocks": 2}
    return sorted(names, key=lambda n: (order[n.split(".")[0]], [int(x) if x.isdigit() else 0 for x in n.split(".")[1:]]))
