"""Generate the small, random-weight Llama models the mesh serves in development and tests.

Nothing is downloaded: each model is built locally from a :class:`ModelSpec` into a
HuggingFace-format directory that vLLM (CPU or GPU) and ``transformers`` load as-is::

    DEST/NAME/
        config.json                 LlamaForCausalLM config
        generation_config.json      bos/eos ids
        model.safetensors           random weights, torch.manual_seed(spec.seed)
        tokenizer.json              byte-level BPE trained on CORPUS below
        tokenizer_config.json       special tokens and the chat template
        switchyard-model.json       manifest: name, spec, version (content hash)

Generation is deterministic: the same spec and the same library versions give
byte-identical files, so the manifest ``version`` identifies a model across machines.
"""

from __future__ import annotations

import contextlib
import dataclasses
import hashlib
import json
import os
import shutil
import tempfile
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from services.common.files import file_lock, home_path

__all__ = [
    "CHAT_TEMPLATE",
    "MANIFEST_NAME",
    "MODEL_SPECS",
    "ModelSpec",
    "default_models_dir",
    "init_models",
    "model_version",
    "read_manifest",
]

MANIFEST_NAME = "switchyard-model.json"
# Bump when the generator changes what it writes for an unchanged spec (corpus, template,
# tokenizer setup, dtype): existing directories then count as stale and are rebuilt.
GENERATOR_VERSION = 1
# float32: loads and runs on every vLLM CPU build (bfloat16 needs AVX512-BF16/AMX for speed),
# and GPU engines can still serve it as half/bfloat16 via --dtype.
WEIGHTS_DTYPE = "float32"

BOS_TOKEN = "<|bos|>"
EOS_TOKEN = "<|end|>"  # ends every chat turn and the text; the engine's stop token
PAD_TOKEN = "<|pad|>"
ROLE_TOKENS = ("<|system|>", "<|user|>", "<|assistant|>")
SPECIAL_TOKENS = (BOS_TOKEN, EOS_TOKEN, PAD_TOKEN, *ROLE_TOKENS)  # ids 0..5, in this order

CHAT_TEMPLATE = (
    "{{- bos_token -}}"
    "{%- for message in messages -%}"
    "{%- if message['role'] not in ['system', 'user', 'assistant'] -%}"
    "{{- raise_exception('unsupported role: ' + message['role']) -}}"
    "{%- endif -%}"
    "{{- '<|' + message['role'] + '|>\\n' + message['content'] + eos_token + '\\n' -}}"
    "{%- endfor -%}"
    "{%- if add_generation_prompt -%}"
    "{{- '<|assistant|>\\n' -}}"
    "{%- endif -%}"
)
"""Renders ``<|bos|><|user|>\\nHi<|end|>\\n<|assistant|>\\n`` for one user turn."""


@dataclass(frozen=True)
class ModelSpec:
    """Shape of one generated Llama model; every field changes the weights or tokenizer."""

    name: str  # directory name under the models dir, and the model name clients ask for
    hidden_size: int  # width of the residual stream (embedding size)
    num_layers: int  # decoder blocks
    num_heads: int  # query heads; hidden_size / num_heads must be 32, 64 or 128 (vLLM CPU)
    num_kv_heads: int  # key/value heads (grouped-query attention); divides num_heads
    intermediate_size: int  # SwiGLU MLP width
    vocab_size: int  # tokenizer size == embedding rows (BPE merges, padded with reserved tokens)
    max_position_embeddings: int  # longest context the RoPE config advertises
    seed: int  # torch.manual_seed for the random weights

    @property
    def head_dim(self) -> int:
        """Per-head width: hidden_size / num_heads."""
        return self.hidden_size // self.num_heads

    def validate(self) -> None:
        """Raise ValueError when the spec cannot build a model vLLM serves."""
        if self.hidden_size % self.num_heads:
            raise ValueError(f"{self.name}: hidden_size must be a multiple of num_heads")
        if self.head_dim not in (32, 64, 128):
            raise ValueError(f"{self.name}: head_dim {self.head_dim} not in (32, 64, 128)")
        if self.num_heads % self.num_kv_heads:
            raise ValueError(f"{self.name}: num_kv_heads must divide num_heads")
        if self.vocab_size < 256 + len(SPECIAL_TOKENS):
            raise ValueError(f"{self.name}: vocab_size too small for a byte-level BPE")


MODEL_SPECS: dict[str, ModelSpec] = {
    spec.name: spec
    for spec in (
        ModelSpec(
            name="small",
            hidden_size=128,
            num_layers=2,
            num_heads=4,
            num_kv_heads=2,
            intermediate_size=384,
            vocab_size=2048,
            max_position_embeddings=4096,
            seed=1,
        ),
        ModelSpec(
            name="large",
            hidden_size=512,
            num_layers=6,
            num_heads=8,
            num_kv_heads=4,
            intermediate_size=1536,
            vocab_size=2048,
            max_position_embeddings=4096,
            seed=2,
        ),
    )
}
"""The models ``switchyard init`` builds, by name. Both share one tokenizer (same vocab)."""


def default_models_dir() -> Path:
    """Where models live: $SWITCHYARD_MODELS, else $SWITCHYARD_HOME/models (~/.cache/switchyard)."""
    return home_path("models", "SWITCHYARD_MODELS")


def init_models(
    dest: Path,
    names: Iterable[str] | None = None,
    *,
    force: bool = False,
    progress: Callable[[str], None] = print,
) -> dict[str, Path]:
    """Build the named models (default: all of MODEL_SPECS) under dest; return name -> dir.

    A model whose directory already holds a manifest matching its spec and files is skipped
    unless ``force``. Each model is written to a temporary sibling directory and renamed
    into place, so an interrupted run never leaves a half-written model behind.
    """
    _offline()
    selected = list(MODEL_SPECS) if names is None else list(dict.fromkeys(names))
    unknown = [n for n in selected if n not in MODEL_SPECS]
    if unknown:
        raise KeyError(f"unknown model(s) {unknown}; known: {sorted(MODEL_SPECS)}")
    dest = Path(dest)
    dest.mkdir(parents=True, exist_ok=True)
    tokenizers: dict[int, Any] = {}  # vocab_size -> trained tokenizer, shared between specs
    built: dict[str, Path] = {}
    for name in selected:
        spec = MODEL_SPECS[name]
        spec.validate()
        target = dest / name
        with file_lock(dest / ".switchyard-init.lock"):
            _remove_leftovers(dest, name)
            if not force and _is_up_to_date(target, spec):
                progress(f"{name}: up to date ({target})")
            else:
                if spec.vocab_size not in tokenizers:
                    progress(f"{name}: training tokenizer (vocab {spec.vocab_size})")
                    tokenizers[spec.vocab_size] = _build_tokenizer(spec.vocab_size)
                _build_into(target, spec, tokenizers[spec.vocab_size], progress)
        built[name] = target
    return built


def read_manifest(model_dir: Path) -> dict[str, Any] | None:
    """The parsed switchyard-model.json of model_dir, or None if missing or unreadable."""
    try:
        data = json.loads((Path(model_dir) / MANIFEST_NAME).read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return None
    return data if isinstance(data, dict) else None


def model_version(model_dir: Path) -> str:
    """Short content hash of every file in model_dir except the manifest (sorted by name)."""
    digest = hashlib.sha256()
    for path in sorted(Path(model_dir).iterdir()):
        if path.name == MANIFEST_NAME or not path.is_file():
            continue
        digest.update(path.name.encode() + b"\0")
        with path.open("rb") as f:
            for chunk in iter(lambda: f.read(1 << 20), b""):
                digest.update(chunk)
        digest.update(b"\0")
    return digest.hexdigest()[:12]


# --------------------------------------------------------------------------- internals


def _offline() -> None:
    """Make sure nothing below tries the HuggingFace Hub."""
    os.environ["HF_HUB_OFFLINE"] = "1"
    os.environ["TRANSFORMERS_OFFLINE"] = "1"
    os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")


def _expected_manifest(spec: ModelSpec) -> dict[str, Any]:
    """The manifest fields that must match for an existing directory to count as current."""
    return {
        "name": spec.name,
        "spec": dataclasses.asdict(spec),
        "generator": GENERATOR_VERSION,
        "dtype": WEIGHTS_DTYPE,
    }


def _is_up_to_date(target: Path, spec: ModelSpec) -> bool:
    """True when target has a manifest for exactly this spec and its files still hash to it."""
    manifest = read_manifest(target)
    if manifest is None:
        return False
    expected = _expected_manifest(spec)
    if any(manifest.get(key) != value for key, value in expected.items()):
        return False
    return bool(manifest.get("version") == model_version(target))


@contextlib.contextmanager
def _quiet_transformers() -> Iterator[None]:
    """Silence transformers' tqdm bars (we report progress ourselves), restoring them after."""
    from transformers.utils import logging

    hf_logging: Any = logging  # untyped module

    enabled = hf_logging.is_progress_bar_enabled()
    hf_logging.disable_progress_bar()
    try:
        yield
    finally:
        if enabled:
            hf_logging.enable_progress_bar()


def _remove_leftovers(dest: Path, name: str) -> None:
    """Delete temp/old dirs a crashed earlier run left for this model (called under the lock)."""
    for pattern in (f".{name}.tmp-*", f".{name}.old-*"):
        for path in dest.glob(pattern):
            shutil.rmtree(path, ignore_errors=True)


def _build_into(
    target: Path, spec: ModelSpec, tokenizer: Any, progress: Callable[[str], None]
) -> None:
    """Write the model into a temp dir next to target, then swap it into place."""
    tmp = Path(tempfile.mkdtemp(prefix=f".{spec.name}.tmp-", dir=target.parent))
    try:
        progress(f"{spec.name}: building weights ({_describe(spec)})")
        model = _build_model(spec, tokenizer)
        progress(f"{spec.name}: saving to {target}")
        _save(tmp, spec, model, tokenizer)
        _swap_into_place(tmp, target)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    manifest = read_manifest(target) or {}
    progress(f"{spec.name}: done, version {manifest.get('version')}")


def _describe(spec: ModelSpec) -> str:
    """One-line shape summary for progress messages."""
    return (
        f"{spec.num_layers} layers, hidden {spec.hidden_size}, "
        f"{spec.num_heads}x{spec.head_dim} heads, ~{_param_count(spec) / 1e6:.1f}M params"
    )


def _param_count(spec: ModelSpec) -> int:
    """Parameter count of the LlamaForCausalLM the spec builds (untied embeddings)."""
    h, kv = spec.hidden_size, spec.num_kv_heads * spec.head_dim
    attention = 2 * h * h + 2 * h * kv
    mlp = 3 * h * spec.intermediate_size
    per_layer = attention + mlp + 2 * h
    return spec.num_layers * per_layer + 2 * spec.vocab_size * h + h


def _swap_into_place(tmp: Path, target: Path) -> None:
    """Rename tmp to target; an existing target is moved aside first, then deleted."""
    old: Path | None = None
    if target.exists():
        old = Path(tempfile.mkdtemp(prefix=f".{target.name}.old-", dir=target.parent))
        os.replace(target, old / target.name)
    os.replace(tmp, target)
    if old is not None:
        shutil.rmtree(old, ignore_errors=True)


def _build_tokenizer(vocab_size: int) -> Any:
    """Train a byte-level BPE on CORPUS and wrap it as a transformers fast tokenizer.

    Special tokens take ids 0-5; when the corpus runs out of merges before vocab_size,
    the rest is filled with ``<|reserved_N|>`` special tokens so len(tokenizer) ==
    vocab_size exactly (every id the model can emit decodes).
    """
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, processors, trainers
    from transformers import PreTrainedTokenizerFast as _Fast

    fast_tokenizer: Any = _Fast  # untyped class

    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=True)
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=vocab_size,
        min_frequency=1,
        special_tokens=list(SPECIAL_TOKENS),
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
        show_progress=False,
    )
    tok.train_from_iterator(_corpus_lines(), trainer=trainer)
    missing = vocab_size - tok.get_vocab_size(with_added_tokens=True)
    if missing > 0:
        tok.add_special_tokens([f"<|reserved_{i}|>" for i in range(missing)])
    bos_id = tok.token_to_id(BOS_TOKEN)
    tok.post_processor = processors.TemplateProcessing(
        single=f"{BOS_TOKEN} $A",
        pair=f"{BOS_TOKEN} $A $B",
        special_tokens=[(BOS_TOKEN, bos_id)],
    )
    wrapped = fast_tokenizer(
        tokenizer_object=tok,
        bos_token=BOS_TOKEN,
        eos_token=EOS_TOKEN,
        pad_token=PAD_TOKEN,
        additional_special_tokens=list(ROLE_TOKENS),
        model_max_length=max(s.max_position_embeddings for s in MODEL_SPECS.values()),
        clean_up_tokenization_spaces=False,
    )
    wrapped.chat_template = CHAT_TEMPLATE
    return wrapped


def _corpus_lines() -> list[str]:
    """CORPUS as non-empty lines (fixed order, so BPE training is reproducible)."""
    return [line for line in CORPUS.splitlines() if line.strip()]


def _build_model(spec: ModelSpec, tokenizer: Any) -> Any:
    """A LlamaForCausalLM with seeded random weights, in WEIGHTS_DTYPE."""
    import torch
    from transformers import LlamaConfig
    from transformers import LlamaForCausalLM as _Llama

    llama_for_causal_lm: Any = _Llama  # untyped class

    config = LlamaConfig(
        vocab_size=spec.vocab_size,
        hidden_size=spec.hidden_size,
        intermediate_size=spec.intermediate_size,
        num_hidden_layers=spec.num_layers,
        num_attention_heads=spec.num_heads,
        num_key_value_heads=spec.num_kv_heads,
        head_dim=spec.head_dim,
        max_position_embeddings=spec.max_position_embeddings,
        rms_norm_eps=1e-5,
        bos_token_id=tokenizer.bos_token_id,
        eos_token_id=tokenizer.eos_token_id,
        pad_token_id=tokenizer.pad_token_id,
        tie_word_embeddings=False,
        dtype=WEIGHTS_DTYPE,
    )
    torch.manual_seed(spec.seed)
    model = llama_for_causal_lm(config)
    model = model.to(getattr(torch, WEIGHTS_DTYPE))
    model.generation_config.bos_token_id = tokenizer.bos_token_id
    model.generation_config.eos_token_id = tokenizer.eos_token_id
    model.generation_config.pad_token_id = tokenizer.pad_token_id
    model.eval()
    return model


def _save(tmp: Path, spec: ModelSpec, model: Any, tokenizer: Any) -> None:
    """save_pretrained model and tokenizer into tmp, then write the manifest last."""
    with _quiet_transformers():
        model.save_pretrained(tmp, safe_serialization=True)
    # save_jinja_files=False keeps the template in tokenizer_config.json (read by every version).
    tokenizer.save_pretrained(tmp, save_jinja_files=False)
    _portable_tokenizer_config(tmp / "tokenizer_config.json")
    _fix_permissions(tmp)
    manifest = {
        **_expected_manifest(spec),
        "head_dim": spec.head_dim,
        "parameters": _param_count(spec),
        "version": model_version(tmp),
    }
    (tmp / MANIFEST_NAME).write_text(
        json.dumps(manifest, indent=2, sort_keys=True) + "\n", encoding="utf-8"
    )


def _fix_permissions(model_dir: Path) -> None:
    """Give the dir and files the umask's usual modes (mkdtemp and some writers use 0o700/0o600)."""
    umask = os.umask(0)
    os.umask(umask)
    model_dir.chmod(0o777 & ~umask)
    for path in model_dir.iterdir():
        path.chmod(0o666 & ~umask)


def _portable_tokenizer_config(config_path: Path) -> None:
    """Rewrite tokenizer_config.json in the form both transformers 4.x and 5.x load.

    5.x writes its own class name and a list-valued ``extra_special_tokens``, which 4.x
    rejects; the 4.x spellings below load the same tokenizer in both.
    """
    config = json.loads(config_path.read_text(encoding="utf-8"))
    config["tokenizer_class"] = "PreTrainedTokenizerFast"
    extra = config.pop("extra_special_tokens", None)
    if isinstance(extra, list):
        config["additional_special_tokens"] = extra
    config_path.write_text(
        json.dumps(config, indent=2, sort_keys=True, ensure_ascii=False) + "\n", encoding="utf-8"
    )


# The tokenizer's training text: varied everyday and technical English so that common
# words, punctuation and digits become single tokens. Changing it changes every model.
CORPUS = """\
The morning train was late again, so Maria walked to the office along the river.
It was a cold, bright day in early spring, and the water moved slowly under the old stone bridge.
She bought a coffee from the small shop on the corner and said hello to the man who sold newspapers.
He asked her about the weather, the news, and whether she had seen the game last night.
"Not this time," she said. "I was working late, and then I fell asleep on the couch."

When she arrived, the team was already in the meeting room. Someone had brought fresh bread and
fruit.
They talked about the plan for the week: what had to be finished, who would help, and what could
wait.
The first question was simple. Why did the system become slow every afternoon at three o'clock?
Nobody knew the answer yet, but everyone had an idea, and some of the ideas were even good ones.

A good question is often more useful than a quick answer. If you ask the right question, the problem
becomes smaller, and you can see which part of it matters. If you ask the wrong one, you may spend a
whole day looking in the wrong place. This is true for machines, for people, and for most things
in life.

Once upon a time, in a village between two hills, there lived a girl who wanted to build a boat.
Her father said the river was too fast, and her mother said the winter was too long, but she kept
working in the evening after school. She cut the wood, she shaped the sides, and she painted the
name of her grandmother on the front. When the summer came, the whole village walked down to the
water
to watch. The boat floated, turned once in the current, and then moved away, straight and steady.

The history of writing is the history of remembering. Before books, people told stories around the
fire,
and each story changed a little every time it was told. Later, people wrote on clay, on stone, on
skin,
and on paper. Today we write on screens, and our words travel around the world in less than a
second.
Still, the basic problem is the same: how do you say something clearly, so that another person
understands?

Good food does not need to be complicated. Take three ripe tomatoes, a little olive oil, some salt,
and a piece of good bread. Cut the tomatoes, add the oil and the salt, and wait for ten minutes.
Eat it outside if you can, in the shade, with friends. Some of the best meals are the simplest ones.
For dinner, you might cook rice with onions, garlic, and green beans, or make a soup with potatoes
and carrots.

Science begins with curiosity. A child asks why the sky is blue, why the sea is salty, or why the
moon
changes its shape. A scientist asks the same questions, but then designs an experiment, collects
data,
and checks whether the results agree with the theory. When they do not agree, the theory must
change.
Energy, matter, time, and space are connected in ways that are still not fully understood.

Computers follow instructions exactly. A program is a list of steps, written in a language the
machine
can read. The model reads a prompt, splits it into tokens, and predicts the next token, one at a
time.
Each request is sent to a server, the server returns a response, and the client shows the result.
When many users send requests at the same time, the server must share its memory and its processors.
A cache keeps recent results close, so that the same work is not repeated. A router decides which
engine should handle each request, and a load balancer spreads the traffic across many machines.
Latency is the time it takes to get an answer; throughput is how many answers you get per second.
Errors happen: a network connection fails, a disk is full, a process runs out of memory, or a
timeout
expires. Good software reports the error clearly, retries when it is safe, and never loses data.

def hello(name: str) -> str:
    return f"Hello, {name}!"

for i in range(10):
    print(i, i * i)

if status == 200 and len(data) > 0:
    result = json.loads(data)
else:
    raise ValueError("request failed")

{"name": "alice", "email": "alice@example.com", "age": 31, "active": true, "tags": ["admin",
"user"]}
{"id": 42, "model": "small", "prompt": "Tell me a story.", "max_tokens": 128, "temperature": 0.7}

Dear Sam, thank you for your letter. I am sorry it took me so long to write back. The children are
well,
the garden is growing, and the dog still thinks every visitor is his best friend. We hope you will
visit
us in August. Please tell your sister that we found her blue jacket; it was under the bed all along.
With love, Anna.

Numbers are everywhere: 1, 2, 3, 4, 5, 6, 7, 8, 9, 10, 12, 15, 20, 24, 25, 30, 32, 40, 50, 64, 100,
128, 256, 512, 1000, 1024, 2048, 4096. The year 2024 had 366 days. The price was $19.99, or about
20%
less than last year. Call 555-0100 between 9:00 and 17:30, Monday to Friday.

Questions and answers.
What is the capital of France? The capital of France is Paris.
How many days are there in a week? There are seven days in a week.
Who wrote the letter? The letter was written by Anna, who lives near the sea.
Can you help me with my homework? Yes, of course. What is the question?
What time is it? It is half past four in the afternoon.
Where are you going? I am going home, because it is getting dark and I am tired.

The user asked the assistant a question, and the assistant gave a short, helpful answer.
You are a helpful assistant. Answer the question as clearly and briefly as possible.
Please summarize the following text in one sentence. Please translate this sentence into French.
Sure! Here is a short summary. I'm not sure, but I think the answer is yes. Let me explain.
Thank you! You're welcome. Good morning. Good night. See you tomorrow. Have a nice day.

The city never really sleeps. At night the streets are quieter, but the lights stay on, the buses
keep
running, and somewhere a baker is already making bread for the morning. People work, rest, travel,
and
dream; they meet old friends and new ones, they argue and agree, they laugh and sometimes they cry.
Every house has a story, every window a different life, and every day begins with a small decision.

In the north, the mountains are covered with snow for most of the year. In the south, the fields are
green and the weather is warm. The road between them is long, but the views are beautiful: forests,
lakes, small towns with white churches, and farms where cows and sheep look up as you drive past.
Travelers often stop at a café, order a cup of tea, and write a postcard to someone they love.

Music can change the mood of a room. A slow song makes people quiet; a fast one makes them want to
dance.
Some people play the piano, some play the guitar, and some simply sing while they cook or clean
the house.
Learning an instrument takes patience. You practice a little every day, you make mistakes, and
slowly,
almost without noticing, you get better. The same is true for languages, sports, and most skills.

Animals live in almost every corner of the planet. Birds fly south when the days grow short,
whales sing
to each other across the ocean, and ants carry food many times heavier than their own bodies. A fox
hunts at dusk; an owl watches from a branch; a bear sleeps through the winter in a warm, dark cave.
Scientists count them, photograph them, and try to protect the forests, rivers, and wetlands they
need.

The doctor listened carefully, wrote a few words on her notebook, and smiled. "You should drink
more water,
sleep eight hours, and walk for thirty minutes every day," she said. "Come back in two weeks if
the pain
does not go away." Health is mostly made of small habits: eating vegetables, moving your body,
resting,
and talking to people who care about you.

Money is a tool, not a goal. People save it, spend it, borrow it, lend it, and invest it. A bank
keeps
accounts, a market sets prices, and a government collects taxes to pay for schools, hospitals,
roads,
and police. When prices rise quickly, we call it inflation; when the economy shrinks, we call it a
recession. Economists disagree about many things, but they agree that trust is important.

Football, tennis, basketball, swimming, running, and cycling are popular sports around the world.
Players train hard, coaches build strategies, and fans cheer from the stands or watch on television.
Winning feels wonderful, but losing teaches lessons too: what went wrong, what to practice, and
how to
stay calm under pressure. The best athletes respect their opponents and play fair.

Yesterday it rained all afternoon, so we stayed inside, played cards, and read old magazines.
Tomorrow the forecast says sunny skies with a light wind from the west, perfect for a picnic.
Last week my brother moved to a new apartment near the university; it has two bedrooms, a small
kitchen,
a balcony with plants, and a view of the park. His neighbors seem friendly and quiet.

Every language has its own rhythm. English borrows words from French, Latin, German, Greek, and many
other languages. Children learn to speak by listening, copying, and playing with sounds long before
they learn grammar. Reading aloud, writing every day, and asking questions are the best ways to
improve.
Some words are short and common, like "the", "and", "of", "to", "in", "is", "it", "that", "was",
"for";
others are long and rare, like "extraordinary", "responsibility", "communication", and
"understanding".

To install the package, run the command below, then restart the service and check the logs.
The configuration file contains the port, the host name, the number of workers, and the timeout.
Set the environment variable, open a terminal, and type the command exactly as shown in the example.
If the test fails, read the error message, search the documentation, and try again with debug
output.
The function returns a list of strings; the class stores a dictionary of values; the method updates
the state and raises an exception when the input is invalid. Version 2.1 fixed a bug in the parser.

The meeting ended at noon. Maria went back to her desk, opened the logs, and found the problem:
a job that ran every day at three o'clock was reading the same large file again and again.
She changed one line, tested the change, and wrote a short note to explain what she had done.
The next afternoon, the system was fast, and nobody noticed anything at all, which was exactly the
point.
"""
