"""Prompt handling: validation, CLIP tokenization (77 tokens, truncated with a warning) and text encoding."""

import threading
import warnings

import torch

# Hugging Face fast tokenizers set padding and truncation on their shared Rust object at every call, so two
# threads tokenizing at once corrupt each other's settings (ragged ids, "excessive nesting" errors). Tokenizing
# takes microseconds: one lock for all of them costs nothing and keeps concurrent pipeline calls safe.
_TOKENIZER_LOCK = threading.Lock()


def as_prompt_list(value, name):
    """A prompt or list of prompts → list of str; anything else is a TypeError naming the parameter."""
    if isinstance(value, str):
        return [value]
    if isinstance(value, (list, tuple)) and value and all(isinstance(p, str) for p in value):
        return list(value)
    if isinstance(value, (list, tuple)) and not value:
        raise ValueError(f"{name} is an empty list; pass a string or a non-empty list of strings")
    raise TypeError(f"{name} must be a string or a list of strings, got {type(value).__name__}")


def tokenize(tokenizer, prompts):
    """prompts → input ids (P, max_length), padded; prompts over the limit are truncated with a warning."""
    max_length = tokenizer.model_max_length
    with _TOKENIZER_LOCK:
        ids = tokenizer(prompts, padding="max_length", max_length=max_length, truncation=True,
                        return_tensors="pt").input_ids
        full = tokenizer(prompts, truncation=False).input_ids
    for tokens in full:
        if len(tokens) > max_length:
            kept = tokenizer.decode(tokens[1:max_length - 1])
            warnings.warn(f"prompt truncated to CLIP's {max_length} tokens ({len(tokens)} given); kept: {kept!r}",
                          stacklevel=3)
    return ids


def encode_prompts(engines, prompts):
    """Encodes each distinct prompt once; returns a dict prompt → embedding (L, C) on the engine device."""
    unique = list(dict.fromkeys(prompts))
    ids = tokenize(engines.tokenizer, unique)
    with torch.inference_mode():
        embeddings = engines.text_encode(ids.to(engines.device))
    return {p: embeddings[k] for k, p in enumerate(unique)}
