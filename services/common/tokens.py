"""A turn's prompt as token ids: the one definition the engine and the router share.

The router hashes the same tokens the engine will cache, so both must tokenize a request the
same way: a raw prompt with the tokenizer's special tokens, a conversation through the model's
chat template (which carries its own special tokens).
"""

from __future__ import annotations

from typing import Any, Protocol

from services.common.errors import InvalidArgument
from switchyard.v1 import inference_pb2

CHAT_ROLES = frozenset({"system", "user", "assistant"})


class Tokenizer(Protocol):
    """The part of a HuggingFace tokenizer Switchyard uses."""

    def encode(self, text: str, add_special_tokens: bool = True) -> list[int]: ...

    def apply_chat_template(self, conversation: list[dict[str, str]], **kwargs: Any) -> Any: ...


def prompt_token_ids(req: inference_pb2.GenerateRequest, tokenizer: Tokenizer) -> list[int]:
    """Tokenize the request's prompt or conversation; raises InvalidArgument naming the field."""
    which = req.WhichOneof("input")
    if which == "prompt":
        if not req.prompt:
            raise InvalidArgument("prompt must not be empty")
        return list(tokenizer.encode(req.prompt, add_special_tokens=True))
    if which == "conversation":
        msgs = req.conversation.messages
        if not msgs:
            raise InvalidArgument("conversation.messages must not be empty")
        for i, m in enumerate(msgs):
            if m.role not in CHAT_ROLES:
                raise InvalidArgument(
                    f"conversation.messages[{i}].role must be one of "
                    f"{', '.join(sorted(CHAT_ROLES))}, got {m.role!r}"
                )
        text = tokenizer.apply_chat_template(
            [{"role": m.role, "content": m.content} for m in msgs],
            tokenize=False,
            add_generation_prompt=True,
        )
        return list(tokenizer.encode(str(text), add_special_tokens=False))
    raise InvalidArgument("one of prompt or conversation is required")


class RustEncoder:
    """A HuggingFace tokenizer whose `encode` goes straight to its Rust backend.

    Same ids as `PreTrainedTokenizerFast.encode` (the backend does the work there too, special
    tokens included through its post-processor) at a fraction of the Python overhead, which is
    most of the router's per-turn cost; chat templates still render through transformers."""

    def __init__(self, hf: Any) -> None:
        self._hf = hf
        self._backend = hf.backend_tokenizer

    def encode(self, text: str, add_special_tokens: bool = True) -> list[int]:
        ids: list[int] = self._backend.encode(text, add_special_tokens=add_special_tokens).ids
        return ids

    def apply_chat_template(self, conversation: list[dict[str, str]], **kwargs: Any) -> Any:
        return self._hf.apply_chat_template(conversation, **kwargs)


def load_tokenizer(path: str) -> Tokenizer:
    """A model's tokenizer from its local directory (never the network), encoding through the
    Rust backend when the tokenizer is a fast one."""
    from transformers import AutoTokenizer

    hf = AutoTokenizer.from_pretrained(path, local_files_only=True)
    if getattr(hf, "backend_tokenizer", None) is not None:
        return RustEncoder(hf)
    tok: Tokenizer = hf
    return tok
