"""Tests of services.mesh.models: the locally generated random-weight Llama models."""

from __future__ import annotations

import json
import shutil
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from services.mesh import models
from services.mesh.models import (
    MANIFEST_NAME,
    MODEL_SPECS,
    ModelSpec,
    default_models_dir,
    init_models,
    model_version,
    read_manifest,
)

EXPECTED_FILES = {
    "config.json",
    "generation_config.json",
    "model.safetensors",
    "tokenizer.json",
    "tokenizer_config.json",
    MANIFEST_NAME,
}


@pytest.fixture(scope="module")
def generated(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    """Both models, built once for the module."""
    return init_models(tmp_path_factory.mktemp("models"), progress=lambda _msg: None)


@pytest.fixture(scope="module")
def generated_again(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    """Both models built a second time, in another directory."""
    return init_models(tmp_path_factory.mktemp("models-again"), progress=lambda _msg: None)


@pytest.fixture(scope="module")
def tokenizer(generated: dict[str, Path]) -> Any:
    """The saved tokenizer of the small model, loaded the way engines load it."""
    from transformers import AutoTokenizer

    return AutoTokenizer.from_pretrained(generated["small"])


@pytest.fixture
def small_copy(generated: dict[str, Path], tmp_path: Path) -> Iterator[Path]:
    """A private copy of the small model (tests may tamper with it); yields its parent dir."""
    shutil.copytree(generated["small"], tmp_path / "small")
    yield tmp_path


def _config(model_dir: Path) -> dict[str, Any]:
    data: dict[str, Any] = json.loads((model_dir / "config.json").read_text())
    return data


def test_specs_have_supported_head_dim() -> None:
    assert {"small", "large"} <= set(MODEL_SPECS)
    for spec in MODEL_SPECS.values():
        spec.validate()
        assert spec.head_dim in (32, 64, 128)
        assert spec.hidden_size == spec.head_dim * spec.num_heads


def test_validate_rejects_head_dim_16() -> None:
    bad = ModelSpec("bad", 64, 1, 4, 4, 128, 2048, 4096, 0)
    with pytest.raises(ValueError, match="head_dim"):
        bad.validate()


def test_layout_and_config(generated: dict[str, Path]) -> None:
    assert set(generated) == set(MODEL_SPECS)
    for name, model_dir in generated.items():
        spec = MODEL_SPECS[name]
        assert model_dir.name == name
        assert {p.name for p in model_dir.iterdir()} == EXPECTED_FILES
        config = _config(model_dir)
        assert config["architectures"] == ["LlamaForCausalLM"]
        assert config["head_dim"] == spec.head_dim
        assert config["hidden_size"] // config["num_attention_heads"] == spec.head_dim
        assert config["num_hidden_layers"] == spec.num_layers
        assert config["num_key_value_heads"] == spec.num_kv_heads
        assert config["vocab_size"] == spec.vocab_size
        assert config["max_position_embeddings"] == spec.max_position_embeddings
        gen = json.loads((model_dir / "generation_config.json").read_text())
        assert gen["eos_token_id"] == config["eos_token_id"]


def test_no_temp_dirs_left(generated: dict[str, Path]) -> None:
    dest = generated["small"].parent
    leftovers = [p.name for p in dest.iterdir() if p.is_dir() and p.name.startswith(".")]
    assert leftovers == []


def test_sizes_differ(generated: dict[str, Path]) -> None:
    small, large = MODEL_SPECS["small"], MODEL_SPECS["large"]
    assert large.hidden_size > small.hidden_size
    assert large.num_layers > small.num_layers
    weights = {n: (d / "model.safetensors").stat().st_size for n, d in generated.items()}
    assert weights["large"] > 4 * weights["small"]
    manifests = {n: read_manifest(d) for n, d in generated.items()}
    assert manifests["small"] is not None and manifests["large"] is not None
    assert manifests["large"]["parameters"] > 4 * manifests["small"]["parameters"]


def test_manifest(generated: dict[str, Path]) -> None:
    for name, model_dir in generated.items():
        manifest = read_manifest(model_dir)
        assert manifest is not None
        assert manifest["name"] == name
        assert manifest["spec"]["seed"] == MODEL_SPECS[name].seed
        assert manifest["head_dim"] == MODEL_SPECS[name].head_dim
        assert manifest["version"] == model_version(model_dir)
        assert len(manifest["version"]) == 12


def test_deterministic(generated: dict[str, Path], generated_again: dict[str, Path]) -> None:
    for name in MODEL_SPECS:
        first, second = read_manifest(generated[name]), read_manifest(generated_again[name])
        assert first is not None and second is not None
        assert first["version"] == second["version"]
        for path in sorted(generated[name].iterdir()):
            assert path.read_bytes() == (generated_again[name] / path.name).read_bytes(), path.name
    versions = {read_manifest(d)["version"] for d in generated.values()}  # type: ignore[index]
    assert len(versions) == len(MODEL_SPECS)


def test_tokenizer_round_trips(tokenizer: Any) -> None:
    for text in ["héllo → 世界", "The user asked a question.", "  two  spaces\nand\ttabs 🙂", ""]:
        ids = tokenizer.encode(text)
        assert ids[0] == tokenizer.bos_token_id
        assert tokenizer.decode(ids, skip_special_tokens=True) == text


def test_tokenizer_vocab(tokenizer: Any, generated: dict[str, Path]) -> None:
    assert len(tokenizer) == MODEL_SPECS["small"].vocab_size
    config = _config(generated["small"])
    assert tokenizer.bos_token_id == config["bos_token_id"]
    assert tokenizer.eos_token_id == config["eos_token_id"]
    for word in ["the", "and", "question", "assistant", "morning", "water"]:
        assert len(tokenizer.encode(" " + word, add_special_tokens=False)) == 1, word
    for role in ("<|system|>", "<|user|>", "<|assistant|>"):
        assert len(tokenizer.encode(role, add_special_tokens=False)) == 1
        assert role in tokenizer.all_special_tokens


def test_tokenizer_shared_between_models(generated: dict[str, Path]) -> None:
    small, large = (generated[n] / "tokenizer.json" for n in ("small", "large"))
    assert small.read_bytes() == large.read_bytes()


def test_chat_template(tokenizer: Any, generated: dict[str, Path]) -> None:
    saved = json.loads((generated["small"] / "tokenizer_config.json").read_text())
    assert saved["chat_template"] == models.CHAT_TEMPLATE
    messages = [
        {"role": "system", "content": "Be brief."},
        {"role": "user", "content": "What is the capital of France?"},
    ]
    text = tokenizer.apply_chat_template(messages, tokenize=False, add_generation_prompt=True)
    assert text == (
        "<|bos|><|system|>\nBe brief.<|end|>\n"
        "<|user|>\nWhat is the capital of France?<|end|>\n"
        "<|assistant|>\n"
    )
    without = tokenizer.apply_chat_template(messages, tokenize=False, add_generation_prompt=False)
    assert without.endswith("<|end|>\n")
    ids = tokenizer.apply_chat_template(messages, tokenize=True, add_generation_prompt=True)
    ids = ids["input_ids"] if not isinstance(ids, list) else ids
    assert ids.count(tokenizer.bos_token_id) == 1
    assert ids[-2:] == tokenizer.encode("<|assistant|>\n", add_special_tokens=False)


def test_chat_template_rejects_unknown_role(tokenizer: Any) -> None:
    with pytest.raises(Exception, match="unsupported role"):
        tokenizer.apply_chat_template([{"role": "tool", "content": "x"}], tokenize=False)


def test_skips_when_up_to_date(generated: dict[str, Path]) -> None:
    dest = generated["small"].parent
    before = {n: (d / "model.safetensors").stat().st_mtime_ns for n, d in generated.items()}
    messages: list[str] = []
    again = init_models(dest, progress=messages.append)
    assert again == generated
    assert len(messages) == len(MODEL_SPECS)
    assert all("up to date" in m for m in messages)
    after = {n: (d / "model.safetensors").stat().st_mtime_ns for n, d in generated.items()}
    assert after == before


def test_force_rebuilds(small_copy: Path) -> None:
    old = (small_copy / "small" / "model.safetensors").stat().st_ino
    messages: list[str] = []
    init_models(small_copy, ["small"], force=True, progress=messages.append)
    assert any("training tokenizer" in m for m in messages)
    assert any("building weights" in m for m in messages)
    assert any("saving" in m for m in messages)
    assert (small_copy / "small" / "model.safetensors").stat().st_ino != old
    assert model_version(small_copy / "small") == read_manifest(small_copy / "small")["version"]  # type: ignore[index]


@pytest.mark.parametrize("damage", ["spec", "weights", "missing"])
def test_rebuilds_when_stale(small_copy: Path, damage: str) -> None:
    model_dir = small_copy / "small"
    version = model_version(model_dir)
    if damage == "spec":
        manifest = read_manifest(model_dir)
        assert manifest is not None
        manifest["spec"]["seed"] += 1
        (model_dir / MANIFEST_NAME).write_text(json.dumps(manifest))
    elif damage == "weights":
        with (model_dir / "model.safetensors").open("r+b") as f:
            f.seek(-4, 2)
            f.write(b"\0\0\0\0")
    else:
        (model_dir / MANIFEST_NAME).unlink()
    messages: list[str] = []
    init_models(small_copy, ["small"], progress=messages.append)
    assert not any("up to date" in m for m in messages)
    assert model_version(model_dir) == version


def test_unknown_name(tmp_path: Path) -> None:
    with pytest.raises(KeyError, match="nope"):
        init_models(tmp_path, ["nope"], progress=lambda _msg: None)
    assert list(tmp_path.iterdir()) == []


def test_loads_and_generates_with_transformers(generated: dict[str, Path], tokenizer: Any) -> None:
    import torch
    from transformers import AutoModelForCausalLM

    model: Any = AutoModelForCausalLM.from_pretrained(generated["small"])
    ids = tokenizer("The morning train", return_tensors="pt")
    with torch.no_grad():
        out: Any = model.generate(**ids, max_new_tokens=5, do_sample=False)
    assert out.shape[-1] == ids["input_ids"].shape[-1] + 5


def test_default_models_dir(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    monkeypatch.delenv("SWITCHYARD_MODELS", raising=False)
    monkeypatch.delenv("SWITCHYARD_HOME", raising=False)
    assert default_models_dir() == Path.home() / ".cache" / "switchyard" / "models"
    monkeypatch.setenv("SWITCHYARD_HOME", str(tmp_path / "home"))
    assert default_models_dir() == tmp_path / "home" / "models"
    monkeypatch.setenv("SWITCHYARD_MODELS", str(tmp_path / "elsewhere"))
    assert default_models_dir() == tmp_path / "elsewhere"


def test_removes_leftovers_of_a_crashed_run(small_copy: Path) -> None:
    crashed = small_copy / ".small.tmp-abc123"
    crashed.mkdir()
    (crashed / "model.safetensors").write_bytes(b"half")
    init_models(small_copy, ["small"], progress=lambda _msg: None)
    assert not crashed.exists()
    assert sorted(p.name for p in small_copy.iterdir() if p.is_dir()) == ["small"]


def test_param_count_matches_model(generated: dict[str, Path]) -> None:
    import torch
    from safetensors.torch import load_file

    for name, model_dir in generated.items():
        tensors: dict[str, torch.Tensor] = load_file(model_dir / "model.safetensors")
        total = sum(t.numel() for t in tensors.values())
        assert total == models._param_count(MODEL_SPECS[name])
        assert {t.dtype for t in tensors.values()} == {torch.float32}
