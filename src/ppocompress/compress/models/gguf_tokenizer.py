"""A GGUF's byte-level BPE tokenizer (llama.cpp's "gpt2" model: GPT-2, SmolLM, Qwen...)
rebuilt as a Hugging Face fast tokenizer from the GGUF's own fields.

transformers 5.5 turns such a GGUF into a CodeLlamaTokenizer, which re-derives its
pre-tokenizer from the class and reads every space as the unknown token, and it also adds a
BOS token the GGUF says not to add. Everything here comes from the file: vocabulary, merges,
special tokens, whether to add BOS, the chat template, and llama.cpp's name for the split
rule ("tokenizer.ggml.pre")."""

from __future__ import annotations

from pathlib import Path

from ppocompress.errors import UserError

# llama.cpp's pre-tokenizer names whose split is GPT-2's regex after each digit is split off
# (llama-vocab.cpp groups them); every other "gpt2"-model name is GPT-2's regex alone.
_SINGLE_DIGITS = {"smollm", "starcoder", "refact", "command-r", "codeshell", "exaone", "minerva"}
_SPECIAL = {"bos": "bos_token_id", "eos": "eos_token_id", "unk": "unknown_token_id", "pad": "padding_token_id"}
_CONTROL = 3  # llama.cpp's token type for special tokens


def gguf_tokenizer(gguf: Path):
    """The tokenizer stored in `gguf`, as a PreTrainedTokenizerFast."""
    from gguf import GGUFReader
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, processors
    from transformers import PreTrainedTokenizerFast

    reader = GGUFReader(str(gguf))

    def field(key: str, default=None):
        found = reader.fields.get(key)
        return default if found is None else found.contents()

    if field("tokenizer.ggml.model") != "gpt2":
        raise UserError(f"{gguf.name}: only GGUF files with a byte-level BPE tokenizer (llama.cpp's \"gpt2\") "
                        "can be read; give a Hugging Face model folder instead")
    tokens = field("tokenizer.ggml.tokens")
    merges = [tuple(merge.split(" ", 1)) for merge in field("tokenizer.ggml.merges")]
    backend = Tokenizer(models.BPE(vocab={token: i for i, token in enumerate(tokens)}, merges=merges))
    split = [pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=True)]
    if field("tokenizer.ggml.pre") in _SINGLE_DIGITS:
        split.insert(0, pre_tokenizers.Digits(individual_digits=True))
    backend.pre_tokenizer = pre_tokenizers.Sequence(split)
    backend.decoder = decoders.ByteLevel()
    special = {name: tokens[index] for name, key in _SPECIAL.items() if (index := field(f"tokenizer.ggml.{key}")) is not None}
    if field("tokenizer.ggml.add_bos_token", False) and "bos" in special:
        bos = special["bos"]
        backend.post_processor = processors.TemplateProcessing(single=f"{bos} $A", pair=f"{bos} $A {bos} $B",
                                                               special_tokens=[(bos, tokens.index(bos))])
    else:
        backend.post_processor = processors.ByteLevel(trim_offsets=False)
    types = field("tokenizer.ggml.token_type", [])
    backend.add_special_tokens([token for token, kind in zip(tokens, types) if kind == _CONTROL])
    return PreTrainedTokenizerFast(tokenizer_object=backend, chat_template=field("tokenizer.chat_template"),
                                   **{f"{name}_token": token for name, token in special.items()})
