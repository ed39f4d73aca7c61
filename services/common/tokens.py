"""A turn's input as token ids, and whether it fits a context: the one definition the engine and
the router share.

The router hashes the same tokens the engine will cache, so both must tokenize a request the
same way: a raw prompt with the tokenizer's special tokens, a conversation through the model's
chat template (which carries its own special tokens), and for a resumed turn the text the client
already received appended without special tokens. Both also decide alike whether a prompt fits
the context (`fit_context`), so a turn the engine would refuse is refused by the router with the
same INVALID_ARGUMENT, and a turn the engine would truncate is routed on the truncated tokens.

Long inputs never tokenize on an event loop that serves other turns: `turn_token_ids_async`
moves them to a thread, encoding through a call that releases the GIL, and stops at a token
limit before building a huge id list.

A turn is tokenized once: the router hands the engine the ids it routed on
(`GenerateRequest.prompt_tokens`, see `handoff`), and an engine whose tokenizer has the same
digest (`tokenizer_digest`: the tokenizer's whole definition and chat template) prefills them
as they are (`handed_off`); any other engine, or a turn without them, is tokenized there.
"""

from __future__ import annotations

import array
import asyncio
import functools
import hashlib
import re
import sys
from collections import deque
from dataclasses import dataclass
from typing import Any, Protocol

from services.common.errors import InvalidArgument
from switchyard.v1 import inference_pb2

CHAT_ROLES = frozenset({"system", "user", "assistant"})
# Inputs of at least this many characters are tokenized off the event loop.
OFFLOAD_CHARS = 16_384


class Tokenizer(Protocol):
    """The part of a HuggingFace tokenizer Switchyard uses."""

    def encode(self, text: str, add_special_tokens: bool = True) -> list[int]: ...

    def apply_chat_template(self, conversation: list[dict[str, str]], **kwargs: Any) -> Any: ...


class TooManyTokens(Exception):
    """The input has more tokens than the caller's limit: `count` of them, or at least that
    many when not `exact` (a long text is refused from its beginning, without reading on)."""

    def __init__(self, count: int, limit: int, exact: bool = True) -> None:
        super().__init__(f"{'' if exact else 'over '}{count} tokens, over the limit of {limit}")
        self.count = count
        self.limit = limit
        self.exact = exact

    def describe(self) -> str:
        """ "1234 tokens" or "more than 2048 tokens"."""
        return f"{self.count} tokens" if self.exact else f"more than {self.limit} tokens"


def _render_chat(req: inference_pb2.GenerateRequest, tokenizer: Tokenizer) -> str:
    msgs = req.conversation.messages
    if not msgs:
        raise InvalidArgument("conversation.messages must not be empty")
    for i, m in enumerate(msgs):
        if m.role not in CHAT_ROLES:
            raise InvalidArgument(
                f"conversation.messages[{i}].role must be one of "
                f"{', '.join(sorted(CHAT_ROLES))}, got {m.role!r}"
            )
    try:
        text = tokenizer.apply_chat_template(
            [{"role": m.role, "content": m.content} for m in msgs],
            tokenize=False,
            add_generation_prompt=True,
        )
    except Exception as e:  # jinja2's TemplateError, raise_exception() in the template, ...
        raise InvalidArgument(
            f"conversation: the model's chat template refused it: {e or type(e).__name__}"
        ) from None
    return str(text)


def _encode(
    tokenizer: Tokenizer,
    text: str,
    add_special_tokens: bool,
    limit: int | None = None,
    keep_last: int | None = None,
) -> tuple[list[int], int]:
    """(ids, how many there are). Past `limit` the ids may stop early (at least limit + 1), and
    TooManyTokens (not exact) is raised when the text's beginning alone is over it; with
    `keep_last`, only that many of the last ids are built."""
    if isinstance(tokenizer, RustEncoder):
        return tokenizer.encode_bounded(text, add_special_tokens, limit, keep_last)
    ids = list(tokenizer.encode(text, add_special_tokens=add_special_tokens))
    return (ids[-keep_last:] if keep_last else ids), len(ids)


def _prompt(
    req: inference_pb2.GenerateRequest,
    tokenizer: Tokenizer,
    limit: int | None = None,
    keep_last: int | None = None,
) -> tuple[list[int], int]:
    which = req.WhichOneof("input")
    if which == "prompt":
        if not req.prompt:
            raise InvalidArgument("prompt must not be empty")
        return _encode(tokenizer, req.prompt, True, limit, keep_last)
    if which == "conversation":
        return _encode(tokenizer, _render_chat(req, tokenizer), False, limit, keep_last)
    raise InvalidArgument("one of prompt or conversation is required")


def prompt_token_ids(req: inference_pb2.GenerateRequest, tokenizer: Tokenizer) -> list[int]:
    """Tokenize the request's prompt or conversation; raises InvalidArgument naming the field."""
    return _prompt(req, tokenizer)[0]


def continuation_token_ids(req: inference_pb2.GenerateRequest, tokenizer: Tokenizer) -> list[int]:
    """A resumed turn's received text as token ids ([] when the request is not a resume)."""
    if not req.HasField("continuation") or not req.continuation.received_text:
        return []
    return _encode(tokenizer, req.continuation.received_text, False)[0]


@dataclass(frozen=True)
class TurnTokens:
    """A turn's input tokens as the router needs them."""

    ids: list[int]  # the prompt's tokens then the resumed text's; only the last ones if asked
    count: int  # how many tokens there are in all
    prompt: int = 0  # how many of them are the prompt's (the rest: resumed text)


def turn_tokens(
    req: inference_pb2.GenerateRequest,
    tokenizer: Tokenizer,
    *,
    limit: int | None = None,
    keep_last: int | None = None,
) -> TurnTokens:
    """What the engine prefills for the turn: the prompt, then any text already received.
    Raises TooManyTokens when that is more than `limit` tokens; with `keep_last` (a prompt the
    engine will truncate) only the last that many ids are kept."""
    ids, count = _prompt(req, tokenizer, limit, keep_last)
    prompt = count
    if req.HasField("continuation") and req.continuation.received_text:
        more, n = _encode(tokenizer, req.continuation.received_text, False, limit, keep_last)
        ids, count = ids + more, count + n
    if limit is not None and count > limit:
        raise TooManyTokens(count, limit)
    if keep_last is not None and len(ids) > keep_last:
        ids = ids[-keep_last:]
    return TurnTokens(ids, count, prompt)


def tokenizer_digest(tokenizer: Tokenizer) -> str:
    """What identifies how `tokenizer` turns a request into ids: its whole definition and its
    chat template ("" for a tokenizer that cannot say: its ids are never handed off)."""
    return getattr(tokenizer, "digest", "")


_U32 = next(t for t in "IL" if array.array(t).itemsize == 4)  # (the typecode of a uint32)


def _pack(ids: list[int]) -> bytes:
    a = array.array(_U32, ids)
    if sys.byteorder != "little":
        a.byteswap()
    return a.tobytes()


def _unpack(data: bytes) -> list[int]:
    a = array.array(_U32)
    a.frombytes(data)
    if sys.byteorder != "little":
        a.byteswap()
    return a.tolist()


def handoff(turn: TurnTokens, tokenizer: Tokenizer) -> inference_pb2.PromptTokens | None:
    """The router's ids for the engine (None when they are not the whole input, or the
    tokenizer has no digest)."""
    digest = tokenizer_digest(tokenizer)
    if not digest or len(turn.ids) != turn.count:
        return None
    return inference_pb2.PromptTokens(ids=_pack(turn.ids), prompt=turn.prompt, tokenizer=digest)


def handed_off(
    req: inference_pb2.GenerateRequest, tokenizer: Tokenizer
) -> tuple[list[int], int] | None:
    """(ids, how many are the prompt's) the router handed over for this tokenizer, or None:
    the engine tokenizes the turn itself."""
    if not req.HasField("prompt_tokens"):
        return None
    pt = req.prompt_tokens
    digest = tokenizer_digest(tokenizer)
    if not digest or pt.tokenizer != digest or not pt.ids or len(pt.ids) % 4:
        return None
    ids = _unpack(pt.ids)
    if not 0 < pt.prompt <= len(ids):
        return None
    return ids, pt.prompt


def turn_token_ids(req: inference_pb2.GenerateRequest, tokenizer: Tokenizer) -> list[int]:
    """All of the turn's input tokens (see `turn_tokens`)."""
    return turn_tokens(req, tokenizer).ids


def input_chars(req: inference_pb2.GenerateRequest) -> int:
    """Characters of input the turn carries (prompt or every message, plus resumed text)."""
    which = req.WhichOneof("input")
    n = len(req.prompt) if which == "prompt" else 0
    if which == "conversation":
        n = sum(len(m.content) for m in req.conversation.messages)
    if req.HasField("continuation"):
        n += len(req.continuation.received_text)
    return n


async def turn_tokens_async(
    req: inference_pb2.GenerateRequest,
    tokenizer: Tokenizer,
    *,
    limit: int | None = None,
    keep_last: int | None = None,
) -> TurnTokens:
    """`turn_tokens`, in a worker thread when the input is long, so that the event loop keeps
    serving everyone else meanwhile."""
    if input_chars(req) < OFFLOAD_CHARS:
        return turn_tokens(req, tokenizer, limit=limit, keep_last=keep_last)
    return await asyncio.to_thread(
        functools.partial(turn_tokens, req, tokenizer, limit=limit, keep_last=keep_last)
    )


def fit_context(
    prompt_tokens: int,
    max_tokens: int | None,
    context: int,
    *,
    default_max_tokens: int,
    truncate: bool,
) -> tuple[int, int]:
    """(max_tokens, prompt tokens to drop from the front) for a prompt of `prompt_tokens` in a
    `context`-token window. An unset `max_tokens` takes `default_max_tokens`, or what is left
    of the context when less (at least 1). Raises InvalidArgument when prompt plus max_tokens
    exceed the context and `truncate` is off (or truncating could not make room)."""
    if max_tokens is None:
        max_tokens = min(default_max_tokens, max(1, context - prompt_tokens))
    if prompt_tokens + max_tokens <= context:
        return max_tokens, 0
    room = context - max_tokens
    if not truncate or room < 1:
        raise InvalidArgument(
            f"prompt is {prompt_tokens} tokens and sampling.max_tokens is {max_tokens}: together "
            f"they exceed the model's context of {context} tokens (shorten the prompt, lower "
            f"sampling.max_tokens, or set truncate_prompt)"
        )
    return max_tokens, prompt_tokens - room


class RustEncoder:
    """A HuggingFace tokenizer whose `encode` goes straight to its Rust backend.

    Same ids as `PreTrainedTokenizerFast.encode` (the backend does the work there too, special
    tokens included through its post-processor) at a fraction of the Python overhead, which is
    most of the router's per-turn cost; chat templates still render through transformers.

    Texts encode through `encode_batch_fast` (`encode_batch` without the character offsets,
    which nothing here reads: a third less time than `encode`, 68 against 101 µs for a 64-word
    prompt). Long texts are for worker threads, and must not stall the thread that holds the
    event loop: `encode_batch_fast` releases the GIL (plain `encode` holds it, seconds for
    megabytes), and they go in pieces of about `CHUNK_CHARS` cut between words (so each
    piece tokenizes as it does within the whole), because what cannot release the GIL —
    building the id list, and freeing an Encoding — costs a fraction of a second for a megabyte
    in one piece. Past a `limit` the counting stops; with `keep_last` only the last ids are
    kept.
    """

    CHUNK_CHARS = 32_768  # texts longer than twice this are encoded in pieces of about this size
    BATCH = 8  # pieces per encode_batch_fast call
    _BOUNDARY = re.compile(r"(?<=\S) (?=\S)")  # one space between two words

    def __init__(self, hf: Any) -> None:
        self._hf = hf
        self._backend = hf.backend_tokenizer
        # (see `tokenizer_digest`; a chat template may be a dict of named templates)
        template = getattr(hf, "chat_template", None)
        self.digest = hashlib.sha256(
            f"{self._backend.to_str()}\0{template!r}".encode("utf-8", "surrogatepass")
        ).hexdigest()[:32]
        # Without offsets (tokenizers >= 0.21), else the plain batch call: the same ids.
        self._batch = getattr(self._backend, "encode_batch_fast", self._backend.encode_batch)
        self._special: tuple[list[int], list[int]] | None = None

    def encode(self, text: str, add_special_tokens: bool = True) -> list[int]:
        return self.encode_bounded(text, add_special_tokens)[0]

    def encode_bounded(
        self,
        text: str,
        add_special_tokens: bool,
        limit: int | None = None,
        keep_last: int | None = None,
    ) -> tuple[list[int], int]:
        """(ids, count) as `encode`. Past `limit` the ids may stop early (at least limit + 1),
        and a long text raises TooManyTokens (not exact) as soon as it is over; with
        `keep_last`, only that many of the last ids are built."""
        if len(text) < 2 * self.CHUNK_CHARS:
            enc = self._batch([text], add_special_tokens=add_special_tokens)[0]
            count = len(enc)
            if limit is not None and count > limit:
                enc.truncate(limit + 1)
            out: list[int] = enc.ids
            return (out[-keep_last:] if keep_last else out), count
        head, tail = self._special_tokens() if add_special_tokens else ([], [])
        count = len(head) + len(tail)
        parts: deque[list[int]] = deque()  # ids of the pieces kept
        kept = 0
        pieces = self._pieces(text)
        for i in range(0, len(pieces), self.BATCH):
            batch = self._batch(pieces[i : i + self.BATCH], add_special_tokens=False)
            while batch:
                enc = batch.pop(0)  # freed one by one: the GIL changes hands in between
                count += len(enc)
                if limit is not None and count > limit:
                    raise TooManyTokens(count, limit, exact=False)
                piece: list[int] = enc.ids
                parts.append(piece)
                kept += len(piece)
                while keep_last is not None and kept - len(parts[0]) >= keep_last:
                    kept -= len(parts.popleft())
        ids = [*head, *(t for p in parts for t in p), *tail]
        return (ids[-keep_last:] if keep_last else ids), count

    def _pieces(self, text: str) -> list[str]:
        """`text` cut into pieces of about CHUNK_CHARS, each cut at one space between words."""
        out, start, n = [], 0, len(text)
        while n - start > 2 * self.CHUNK_CHARS:
            at = start + self.CHUNK_CHARS
            m = self._BOUNDARY.search(text, at, at + 4096)
            cut = m.start() if m else at
            out.append(text[start:cut])
            start = cut
        out.append(text[start:])
        return out

    def _special_tokens(self) -> tuple[list[int], list[int]]:
        """The ids the post-processor puts before and after a single sequence (e.g. BOS)."""
        if self._special is None:
            bare = self._backend.encode("a", add_special_tokens=False).ids
            full = self._backend.encode("a", add_special_tokens=True).ids
            at = next(
                (i for i in range(len(full) - len(bare) + 1) if full[i : i + len(bare)] == bare),
                len(full),
            )
            self._special = (full[:at], full[at + len(bare) :])
        return self._special

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
