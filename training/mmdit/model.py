"""Components of `glyph-mmdit`: a small Stable-Diffusion-3-family model (joint attention, MMDiT) that writes
any word of 1-8 letters, assembled into a STOCK diffusers ``StableDiffusion3Pipeline`` (loads with
``DiffusionPipeline.from_pretrained``, no custom code).

- Tokenizer (``tokenizers`` WordLevel in ``PreTrainedTokenizerFast``): the quoted word becomes one token per
  letter AND position, ``"Stop"`` -> ``s1 t2 o3 p4 #end``. A letter token says what to write and where (the
  k-th letter slot); the transformer's image tokens carry their 2-D position (SD3's sin-cos position
  embedding), so writing letter k is "image tokens near slot k attend to the token ``?k``". The same tokenizer
  serves both CLIP encoders. Lower/upper case give the same tokens; letters after the 8th are dropped (diffprobe
  checks the word first: :func:`diffprobe.zoo.glyph_mmdit.check_prompt`).
- Two CLIP text encoders (``CLIPTextModelWithProjection``, causal, 2 layers, width 64) as SD3 has, and a
  one-layer T5 encoder (frozen, random) in T5's place: called with ``max_sequence_length=1`` (T5_LENGTH) it sees only
  ``</s>`` and adds one constant context token. It is there so the folder loads as a stock SD3 pipeline
  (``StableDiffusion3Pipeline`` does not load without a ``text_encoder_3`` entry).
- The pooled prompt embedding (SD3's adaLN input) is silenced in the shipped model: both CLIPs'
  ``text_projection`` are zero (``train.py --zero-pooled``), so the prompt acts only through joint attention.
- A small ``AutoencoderKL`` without down-sampling (one block, 4 latent channels): SD3's pipeline needs an
  autoencoder; at 32x128 pixels none is needed for speed, so this one only maps pixels <-> 4 channels.
- ``SD3Transformer2DModel``: patch 4 -> 8x32 image tokens (4x4 pixels each), 8 joint blocks, width 128.
- ``FlowMatchEulerDiscreteScheduler`` (shift 3), rectified-flow training as SD3.
"""
from __future__ import annotations

import torch

from diffprobe.zoo import glyph_mmdit as zoo
from diffprobe.zoo import spell_data as data

MAX_LENGTH = 24  # CLIP tokenizer length: template (<= 9 words) + 8 letters + #end + </s>
PAD, EOS, UNK = "<pad>", "</s>", "<unk>"
LETTERS = "abcdefghijklmnopqrstuvwxyz"
END = "#end"
EOS_ID = 1
#: T5's sequence length in the pipeline call the model is trained for (diffprobe.zoo.glyph_mmdit.CALL)
T5_LENGTH = zoo.CALL["max_sequence_length"]

CLIP_CONFIG = dict(
    hidden_size=64, intermediate_size=256, num_hidden_layers=2, num_attention_heads=2,
    max_position_embeddings=MAX_LENGTH, projection_dim=64, pad_token_id=0, eos_token_id=1, bos_token_id=1,
)
VAE_CONFIG = dict(
    in_channels=3, out_channels=3, down_block_types=("DownEncoderBlock2D",), up_block_types=("UpDecoderBlock2D",),
    block_out_channels=(16,), layers_per_block=1, latent_channels=4, norm_num_groups=4, sample_size=data.HEIGHT,
    use_quant_conv=False, use_post_quant_conv=False, mid_block_add_attention=False,
)
TRANSFORMER_CONFIG = dict(
    sample_size=data.HEIGHT, patch_size=4, in_channels=4, out_channels=4, num_layers=8, attention_head_dim=32,
    num_attention_heads=4, joint_attention_dim=2 * CLIP_CONFIG["hidden_size"], caption_projection_dim=128,
    pooled_projection_dim=2 * CLIP_CONFIG["projection_dim"], pos_embed_max_size=data.WIDTH // 4,
)
SHIFT = 3.0


def vocabulary() -> list[str]:
    words: list[str] = []
    for t in data.TEMPLATES:
        words += t.name.split()
    words += "that says in letters".split() + list(data.FONT_NAMES)
    letters = [c + str(k) for k in range(1, data.MAX_LETTERS + 1) for c in LETTERS]
    seen: dict[str, None] = {}
    for w in words + [END] + letters:
        seen.setdefault(w, None)
    return [PAD, EOS, UNK] + list(seen)


def build_tokenizer():
    from tokenizers import Regex, Tokenizer, normalizers, pre_tokenizers, processors
    from tokenizers.models import WordLevel
    from transformers import PreTrainedTokenizerFast

    vocab = {w: i for i, w in enumerate(vocabulary())}
    tok = Tokenizer(WordLevel(vocab=vocab, unk_token=UNK))
    n = data.MAX_LETTERS
    norm = [normalizers.Lowercase(), normalizers.Replace(Regex(r'[^a-z" ]'), " "),
            normalizers.Replace(Regex('(?<="[a-z]{%d})[a-z]+' % n), "")]  # letters after the 8th: dropped
    for k in range(n, 0, -1):  # the k-th letter of a quoted word gets its position: "stop" -> "s1t2o3p4"
        norm.append(normalizers.Replace(Regex('(?<="[a-z]{%d})' % k), str(k)))
    norm += [normalizers.Replace(Regex(r"(?<=[0-9])(?=[a-z])"), " "),  # one token per letter: s1 t2 o3 p4
             normalizers.Replace(Regex(r'"(?=[a-z][0-9])'), " "),  # opening quote: gone
             normalizers.Replace('"', f" {END} ")]  # closing quote: the end of the word
    tok.normalizer = normalizers.Sequence(norm)
    tok.pre_tokenizer = pre_tokenizers.WhitespaceSplit()
    tok.post_processor = processors.TemplateProcessing(single=f"$A {EOS}", special_tokens=[(EOS, vocab[EOS])])
    return PreTrainedTokenizerFast(
        tokenizer_object=tok, pad_token=PAD, eos_token=EOS, unk_token=UNK, model_max_length=MAX_LENGTH
    )


def build_t5_tokenizer():
    """``tokenizer_3``: the same vocabulary, but every character is dropped, so any prompt is ``</s>`` alone (what
    T5 was trained on), and the pipeline has nothing to warn about when it truncates to max_sequence_length=1."""
    from tokenizers import Regex, Tokenizer, normalizers, pre_tokenizers, processors
    from tokenizers.models import WordLevel
    from transformers import PreTrainedTokenizerFast

    vocab = {w: i for i, w in enumerate(vocabulary())}
    tok = Tokenizer(WordLevel(vocab=vocab, unk_token=UNK))
    tok.normalizer = normalizers.Replace(Regex(r"[\s\S]"), "")
    tok.pre_tokenizer = pre_tokenizers.WhitespaceSplit()
    tok.post_processor = processors.TemplateProcessing(single=f"$A {EOS}", special_tokens=[(EOS, vocab[EOS])])
    return PreTrainedTokenizerFast(tokenizer_object=tok, pad_token=PAD, eos_token=EOS, unk_token=UNK,
                                   model_max_length=T5_LENGTH)


def build_text_encoder(vocab_size: int, seed: int):
    from transformers import CLIPTextConfig, CLIPTextModelWithProjection

    torch.manual_seed(seed)
    return CLIPTextModelWithProjection(CLIPTextConfig(vocab_size=vocab_size, **CLIP_CONFIG))


T5_CONFIG = dict(d_model=TRANSFORMER_CONFIG["joint_attention_dim"], d_kv=32, d_ff=256, num_layers=1, num_heads=4,
                 feed_forward_proj="gated-gelu", is_encoder_decoder=False, use_cache=False, pad_token_id=0,
                 eos_token_id=1, decoder_start_token_id=0)


def build_t5(vocab_size: int, seed: int):
    from transformers import T5Config, T5EncoderModel

    torch.manual_seed(seed)
    return T5EncoderModel(T5Config(vocab_size=vocab_size, **T5_CONFIG)).requires_grad_(False)


def build_vae():
    from diffusers import AutoencoderKL

    return AutoencoderKL(**VAE_CONFIG)


def build_transformer():
    from diffusers import SD3Transformer2DModel

    return SD3Transformer2DModel(**TRANSFORMER_CONFIG)


def build_scheduler():
    from diffusers import FlowMatchEulerDiscreteScheduler

    return FlowMatchEulerDiscreteScheduler(num_train_timesteps=1000, shift=SHIFT)


def assemble_pipeline(transformer, vae, te1, te2, t5, tok):
    from diffusers import StableDiffusion3Pipeline

    return StableDiffusion3Pipeline(
        transformer=transformer, scheduler=build_scheduler(), vae=vae, text_encoder=te1, tokenizer=tok,
        text_encoder_2=te2, tokenizer_2=tok, text_encoder_3=t5, tokenizer_3=build_t5_tokenizer(),
    )


def tokenize(tok, prompts):
    """Token ids exactly as StableDiffusion3Pipeline's CLIP path makes them (padded to MAX_LENGTH)."""
    return tok(list(prompts), padding="max_length", max_length=MAX_LENGTH, truncation=True,
               return_tensors="pt").input_ids


def encode(te1, te2, t5, ids):
    """(prompt_embeds, pooled) as StableDiffusion3Pipeline.encode_prompt builds them: each CLIP's penultimate
    hidden states, concatenated on features, then T5's tokens; pooled = both CLIP projections."""
    states, pooled = [], []
    for te in (te1, te2):
        out = te(ids, output_hidden_states=True)
        pooled.append(out[0])
        states.append(out.hidden_states[-2])
    clip = torch.cat(states, dim=-1)
    t5_ids_ = ids.new_full((ids.shape[0], T5_LENGTH), EOS_ID)
    return torch.cat([clip, t5(t5_ids_)[0]], dim=1), torch.cat(pooled, dim=-1)


@torch.no_grad()
def predict_x0(tr, te1, te2, t5, tok, vae, prompts, z):
    """The pixels the transformer predicts for ``prompts`` from latent noise ``z`` at the noisiest level (sigma 1:
    x0 = z - v), decoded and clamped to [-1, 1]; on ``z``'s device."""
    dev = z.device
    e, p = encode(te1, te2, t5, tokenize(tok, prompts).to(dev))
    t = torch.full((len(prompts),), 1000.0, device=dev)
    v = tr(hidden_states=z, encoder_hidden_states=e, pooled_projections=p, timestep=t).sample
    return vae.decode((z - v) / vae.config.scaling_factor + vae.config.shift_factor).sample.clamp(-1, 1)


def count_params(m) -> int:
    return sum(p.numel() for p in m.parameters())
