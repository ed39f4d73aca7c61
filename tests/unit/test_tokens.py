"""The router tokenizes exactly as the engine does (same ids), or prefix matching breaks."""

import pytest

from services.common.errors import InvalidArgument
from services.common.tokens import RustEncoder, load_tokenizer, prompt_token_ids
from switchyard.v1 import inference_pb2 as pb

TEXTS = ["Hello there", "  leading spaces and\ttabs\n", "héllo → 世界 🚀", "a" * 3000, "x"]


@pytest.fixture(scope="module")
def tokenizers(tmp_path_factory):
    from transformers import AutoTokenizer

    from services.mesh.models import init_models

    path = init_models(tmp_path_factory.mktemp("models"), ["small"], progress=lambda m: None)
    small = str(path["small"])
    return load_tokenizer(small), AutoTokenizer.from_pretrained(small, local_files_only=True)


def test_router_ids_equal_engine_ids(tokenizers):
    fast, hf = tokenizers
    assert isinstance(fast, RustEncoder)
    for text in TEXTS:
        for special in (True, False):
            assert fast.encode(text, add_special_tokens=special) == hf.encode(
                text, add_special_tokens=special
            ), text


def test_prompt_and_conversation_ids_match(tokenizers):
    fast, hf = tokenizers
    req = pb.GenerateRequest(prompt="héllo → 世界")
    assert prompt_token_ids(req, fast) == prompt_token_ids(req, hf)
    chat = pb.GenerateRequest(
        conversation=pb.Conversation(
            messages=[
                pb.ChatMessage(role="system", content="Be brief."),
                pb.ChatMessage(role="user", content="What is a switchyard?"),
            ]
        )
    )
    assert prompt_token_ids(chat, fast) == prompt_token_ids(chat, hf)


def test_missing_input_names_the_fields(tokenizers):
    fast, _ = tokenizers
    with pytest.raises(InvalidArgument, match="one of prompt or conversation is required"):
        prompt_token_ids(pb.GenerateRequest(), fast)
