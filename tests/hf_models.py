"""Small Hugging Face models and a real BPE tokenizer, built here with `transformers` and
`tokenizers` (no hub): the material the tokenizer, chat and --from-llama tests run on."""

from __future__ import annotations

import copy
from pathlib import Path

BOS, EOS, START = "<|endoftext|>", "<|im_end|>", "<|im_start|>"
SPECIALS = [BOS, START, EOS]
# ChatML, with a default system turn, bos from the special tokens, and a refusal
CHAT_TEMPLATE = (
    "{{ bos_token }}"
    "{%- if messages[0]['role'] != 'system' %}"
    "{{ '<|im_start|>system\\nYou are a helpful assistant.<|im_end|>\\n' }}"
    "{%- endif %}"
    "{%- for message in messages %}"
    "{%- if message['role'] not in ['system', 'user', 'assistant'] %}"
    "{{ raise_exception('Unknown role: ' + message['role']) }}"
    "{%- endif %}"
    "{{ '<|im_start|>' + message['role'] + '\\n' + message['content'] | trim + '<|im_end|>\\n' }}"
    "{%- endfor %}"
    "{%- if add_generation_prompt %}{{ '<|im_start|>assistant\\n' }}{%- endif %}"
)
LLAMA3_ROPE = {"rope_type": "llama3", "factor": 8.0, "low_freq_factor": 1.0,
               "high_freq_factor": 4.0, "original_max_position_embeddings": 32}
# family -> (transformers family name, config overrides)
VARIANTS = {
    "llama": ("llama", {}),
    "llama3": ("llama", {"rope_scaling": LLAMA3_ROPE}),
    "mistral": ("mistral", {"sliding_window": 12}),
    "qwen2": ("qwen2", {"tie_word_embeddings": True}),
}


def train_bpe(vocab_size: int = 2048, corpus_bytes: int = 120_000):
    """A byte-level BPE (the GPT-2 / Llama 3 / Qwen2 kind) trained on the head of our prose
    corpus, with a post-processor that prepends bos, as Llama tokenizers do."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, processors, trainers

    from scredge.ref.corpus import prose_corpus

    text = prose_corpus()[:corpus_bytes].decode("utf-8", errors="ignore")
    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(vocab_size=vocab_size, special_tokens=SPECIALS,
                                  initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
                                  show_progress=False)
    tok.train_from_iterator(text.split("\n\n"), trainer)
    bos = tok.token_to_id(BOS)
    tok.post_processor = processors.TemplateProcessing(
        single=f"{BOS} $A", pair=f"{BOS} $A {BOS} $B", special_tokens=[(BOS, bos)])
    return tok


def save_tokenizer(folder: Path, tok, chat_template: str | None = CHAT_TEMPLATE):
    """tokenizer.json, tokenizer_config.json and chat_template.jinja, by transformers."""
    import transformers

    fast = transformers.PreTrainedTokenizerFast(
        tokenizer_object=copy.deepcopy(tok), bos_token=BOS, eos_token=EOS, pad_token=BOS,
        chat_template=chat_template)
    fast.save_pretrained(folder)
    return fast


def family_classes(family: str):
    """transformers' (config class, causal LM class) of `family`."""
    import transformers

    return {
        "llama": (transformers.LlamaConfig, transformers.LlamaForCausalLM),
        "mistral": (transformers.MistralConfig, transformers.MistralForCausalLM),
        "qwen2": (transformers.Qwen2Config, transformers.Qwen2ForCausalLM),
    }[family]


def _seeded(model_cls, cfg, seed: int, bias_std: float):
    """`model_cls(cfg)` from torch seed `seed`, eval mode, its biases random too (transformers
    starts them at zero)."""
    import torch

    torch.manual_seed(seed)
    model = model_cls(cfg).eval()
    with torch.no_grad():
        for name, p in model.named_parameters():
            if name.endswith(".bias"):
                p.normal_(0, bias_std)
    return model


def build_model(variant: str, vocab_size: int, seed: int = 0, std: float = 0.1,
                eos_ids: list[int] | None = None):
    """A random 2-layer model of `variant` (biases random too), eval mode. std 0.1 gives
    decisive greedy choices (transformers' 0.02 gives near-ties)."""
    family, overrides = VARIANTS[variant]
    config_cls, model_cls = family_classes(family)
    cfg = config_cls(vocab_size=vocab_size, hidden_size=32, intermediate_size=64,
                     num_hidden_layers=2, num_attention_heads=4, num_key_value_heads=2,
                     max_position_embeddings=256, rope_theta=1000.0, initializer_range=std,
                     **copy.deepcopy(overrides))
    model = _seeded(model_cls, cfg, seed, bias_std=std)
    model.generation_config.eos_token_id = eos_ids
    model.generation_config.pad_token_id = eos_ids[0] if eos_ids else None
    return model


def save_family(folder, family: str, seed: int = 0, **overrides):
    """A tiny random model of one family (`llama`, `mistral`, `qwen2`; vocabulary 300, biases
    random too), saved with save_pretrained; returns the model in eval mode."""
    config_cls, model_cls = family_classes(family)
    cfg = config_cls(vocab_size=300, hidden_size=32, intermediate_size=48, num_hidden_layers=2,
                     num_attention_heads=4, num_key_value_heads=2, rms_norm_eps=1e-6,
                     max_position_embeddings=256, rope_theta=500.0,
                     **copy.deepcopy(overrides))  # transformers edits rope dicts in place
    model = _seeded(model_cls, cfg, seed, bias_std=0.5)
    model.save_pretrained(folder, safe_serialization=True)
    return model


def hf_greedy(model, ids: list[int], max_new_tokens: int) -> list[int]:
    """transformers' own greedy generate: the new ids (eos included when it stopped)."""
    import torch

    with torch.no_grad():
        out = model.generate(torch.tensor([ids]), max_new_tokens=max_new_tokens,
                             do_sample=False, attention_mask=torch.ones(1, len(ids),
                                                                         dtype=torch.long))
    return out[0, len(ids):].tolist()
