"""The generic registry and the tokenizer registry built on it."""

from __future__ import annotations

import pytest

from scforge.data.tokenizers import get_tokenizer, list_tokenizers
from scforge.registry import Registry


def test_tokenizer_registry_names():
    assert list_tokenizers() == ["binned_expression", "continuous_projection", "rank_value"]
    assert get_tokenizer("rank_value").name == "rank_value"


def test_unknown_name_lists_registered():
    with pytest.raises(KeyError, match="binned_expression, continuous_projection, rank_value"):
        get_tokenizer("bpe")


def test_registry_rejects_duplicates():
    reg: Registry[int] = Registry("thing")
    reg.register("a")(1)
    with pytest.raises(ValueError, match="already registered"):
        reg.register("a")(2)
    assert reg.names() == ["a"] and "a" in reg and reg.get("a") == 1
