"""Streaming PII scrubber: tokens/s on one core, latency added per chunk, and recall/precision per
entity type, with presidio's pattern recognizers side by side when presidio-analyzer is installed.

1. Throughput. LLM-like markdown (Faker sentences, headings, lists; a clean look-alike such as a
   date, version, hash or order number about every 100 tokens; one PII entity or secret about
   every --pii-every tokens), cut into tokens of 1-7 characters (mean 4) and split into replies of
   --reply-tokens. Per reply, with fresh state: `scrub` on the whole text; `StreamScrubber.feed`
   token by token; `ResponseFilter.feed` with one framed GenerateResponse Delta per token (the
   mesh path: frame reassembly, protobuf parse, scrub, re-encode). Median tokens/s over --repeat
   rounds, the paths interleaved within each round. The process is pinned to one CPU.
2. Added latency. Every `ResponseFilter.feed` call timed (p50/p99/max µs) on clean prose and on
   the PII prose, against scrubbing the whole reply once it is complete (the wait its last token
   would see if the filter buffered the reply).
3. Recall/precision on a seeded corpus: --per-type entities of each type in sentences between
   filler sentences, and as many documents with a clean look-alike instead. A planted entity is
   found when a detected span of its type contains it ("exact": same bounds; "redacted": covered
   by spans of any type, i.e. not leaked). A detection is a false positive when it overlaps no
   planted entity of its type. Phone extensions ("x123") are scored outside the entity; phone
   numbers Faker writes as bare digits are out of scope, shown apart and left out of the totals.
4. presidio: AnalyzerEngine with its predefined pattern recognizers and its no-op NLP engine (no
   spaCy model needed), score threshold 0, on the same corpus and replies.
5. Adversarial: --per-disguise documents per entity type and disguise (fullwidth characters,
   zero-width characters inside, Cyrillic look-alike letters, digits of another script, and per
   type: "(at)"/"[dot]", spaces or a newline around "@", spaced-out letters, small or fullwidth
   "@" and "."; cards with dots, slashes, mixed or zero-width separators; non-breaking spaces, en
   dashes), plus as many look-alike documents carrying the generic disguises: recall per type and
   disguise, precision per type, beside presidio on the same documents.
6. Truncation: a turn that ends inside an entity (length, deadline, abort). Documents cut at a
   random point inside their entity (half of them disguised), kept where the cut text already
   carries its type's evidence (e.g. "local@d", six card digits in grouping, a key's BEGIN line);
   each streamed through `StreamScrubber` in 1-7 character tokens and finished. Scrubbed: nothing
   of the entity was emitted. presidio: its spans on the cut text cover what is there of it.
7. Hold-back on clean prose: characters held back after each token (p50/p99), and tokens fed
   before a reply's first visible text.

    .venv/bin/python benchmarks/safety.py
    .venv/bin/python benchmarks/safety.py --tokens 50000 --repeat 7 --json out.json
    .venv/bin/python benchmarks/safety.py --no-presidio --per-type 1000

Needs `pip install faker`; presidio-analyzer is optional. Figures, not pass/fail. Goals: ≥ 50,000
tokens/s per core; ≤ 1 ms p99 added per chunk on clean text; recall and precision ≥ 0.99 per
structured type.
"""

from __future__ import annotations

import argparse
import gc
import importlib
import importlib.metadata
import logging
import os
import random
import statistics
import struct
import sys
import time
from collections import defaultdict
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "protos"))
sys.path.insert(0, str(Path(__file__).resolve().parent))
from _common import percentile, say, table, write_json  # noqa: E402
from safety_corpus import (  # noqa: E402
    GENERIC_DISGUISES,
    TYPE_DISGUISES,
    TYPES,
    Doc,
    Generator,
    Planted,
    cut_tokens,
    disguised_doc,
    disguised_lookalike,
    load_faker,
)

from services.safety import prefilter  # noqa: E402
from services.safety.normalize import fold  # noqa: E402
from services.safety.recognizers import shared_default_recognizers  # noqa: E402
from services.safety.response import ResponseFilter  # noqa: E402
from services.safety.scrubber import Policy, StreamScrubber, entities, scrub  # noqa: E402
from switchyard.v1 import inference_pb2  # noqa: E402

GOAL_TOKENS_S = 50_000
GOAL_P99_US = 1000.0
GOAL_QUALITY = 0.99
LOOKALIKE_EVERY = 100  # tokens between clean look-alikes in the prose
CHARS_PER_TOKEN = 4
# Mix of entity types in the prose (private keys are long and rare).
PROSE_WEIGHTS = {
    "EMAIL": 4.0,
    "PHONE": 4.0,
    "IPV4": 2.0,
    "CREDIT_CARD": 1.0,
    "US_SSN": 1.0,
    "IBAN": 1.0,
    "IPV6": 1.0,
    "AWS_ACCESS_KEY": 1.0,
    "GITHUB_TOKEN": 1.0,
    "SLACK_TOKEN": 0.5,
    "JWT": 0.5,
    "PRIVATE_KEY": 0.1,
}
# presidio entity type -> ours (IP_ADDRESS is split by the detected text; see `presidio_spans`).
PRESIDIO_TYPES = {
    "EMAIL_ADDRESS": "EMAIL",
    "PHONE_NUMBER": "PHONE",
    "CREDIT_CARD": "CREDIT_CARD",
    "US_SSN": "US_SSN",
    "IBAN_CODE": "IBAN",
    "IP_ADDRESS": "IP",
}
PRESIDIO_NONE = {"AWS_ACCESS_KEY", "GITHUB_TOKEN", "SLACK_TOKEN", "JWT", "PRIVATE_KEY"}

Detect = Callable[[str], list[tuple[int, int, str]]]


# --------------------------------------------------------------------------- streams


@dataclass
class Reply:
    text: str
    tokens: list[str]
    frames: list[bytes]  # one framed Delta per token, then the Final


def frame(msg: inference_pb2.GenerateResponse) -> bytes:
    """One uncompressed gRPC frame (flag, big-endian length, message)."""
    data = msg.SerializeToString()
    return struct.pack(">BI", 0, len(data)) + data


def make_replies(toks: Sequence[str], reply_tokens: int) -> list[Reply]:
    replies = []
    for i in range(0, len(toks), reply_tokens):
        part = list(toks[i : i + reply_tokens])
        frames = [
            frame(inference_pb2.GenerateResponse(delta=inference_pb2.Delta(text=t, token_count=1)))
            for t in part
        ]
        final = inference_pb2.Final(
            finish_reason=inference_pb2.FinishReason.FINISH_REASON_STOP,
            usage=inference_pb2.Usage(prompt_tokens=512, completion_tokens=len(part)),
            request_id=f"r{i}",
        )
        frames.append(frame(inference_pb2.GenerateResponse(final=final)))
        replies.append(Reply("".join(part), part, frames))
    return replies


def run_whole(replies: Sequence[Reply], policy: Policy) -> None:
    for r in replies:
        scrub(r.text, policy)


def run_stream(replies: Sequence[Reply], policy: Policy) -> None:
    for r in replies:
        s = StreamScrubber(policy)
        for t in r.tokens:
            s.feed(t)
        s.finish()


def run_filter(replies: Sequence[Reply], policy: Policy) -> None:
    for r in replies:
        f = ResponseFilter(policy)
        for fr in r.frames[:-1]:
            f.feed(fr)
        f.feed(r.frames[-1], True)


def delta_text(body: bytes) -> str:
    """The Delta texts of a body of frames, joined."""
    out, pos = [], 0
    while pos < len(body):
        _, n = struct.unpack_from(">BI", body, pos)
        msg = inference_pb2.GenerateResponse.FromString(body[pos + 5 : pos + 5 + n])
        if msg.HasField("delta"):
            out.append(msg.delta.text)
        pos += 5 + n
    return "".join(out)


def latencies(replies: Sequence[Reply], policy: Policy) -> dict[str, Any]:
    """Per-call times in µs (feed per chunk; whole-text per reply), and whether the streamed
    outputs equal whole-text scrubbing."""
    clock = time.perf_counter_ns
    filt: list[float] = []
    stream: list[float] = []
    whole: list[float] = []
    same = True
    for r in replies:
        t0 = clock()
        expected = scrub(r.text, policy).text
        whole.append((clock() - t0) / 1e3)
        s = StreamScrubber(policy)
        out = []
        for t in r.tokens:
            t0 = clock()
            piece = s.feed(t)
            stream.append((clock() - t0) / 1e3)
            out.append(piece)
        out.append(s.finish())
        f = ResponseFilter(policy)
        body = bytearray()
        for i, fr in enumerate(r.frames):
            t0 = clock()
            b = f.feed(fr, i == len(r.frames) - 1)
            filt.append((clock() - t0) / 1e3)
            body += b
        same = same and "".join(out) == expected == delta_text(bytes(body))
    return {"filter": filt, "stream": stream, "whole": whole, "same": same}


def measure_throughput(
    texts: dict[str, list[Reply]], policy: Policy, repeat: int, presidio: Any
) -> dict[tuple[str, str], list[float]]:
    """tokens/s per (text, path) per round; the paths of one text interleaved in each round."""
    paths: dict[str, Callable[[Sequence[Reply]], None]] = {
        "whole-text scrub": lambda rs: run_whole(rs, policy),
        "StreamScrubber.feed": lambda rs: run_stream(rs, policy),
        "ResponseFilter.feed": lambda rs: run_filter(rs, policy),
    }
    if presidio is not None:
        paths["presidio whole-text"] = lambda rs: presidio_run(presidio, rs)
    out: dict[tuple[str, str], list[float]] = defaultdict(list)
    for rnd in range(repeat):
        say(f"throughput round {rnd + 1}/{repeat}")
        for name, replies in texts.items():
            n = sum(len(r.tokens) for r in replies)
            order = list(paths)
            order = order[rnd % len(order) :] + order[: rnd % len(order)]
            for path in order:
                gc.collect()
                t0 = time.perf_counter()
                paths[path](replies)
                out[(name, path)].append(n / (time.perf_counter() - t0))
    return out


# --------------------------------------------------------------------------- presidio


def presidio_engine() -> tuple[Any, str]:
    """presidio's AnalyzerEngine with pattern recognizers only, or None and why not."""
    try:
        analyzer = importlib.import_module("presidio_analyzer")
        nlp = importlib.import_module("presidio_analyzer.nlp_engine")
    except ImportError as e:
        return None, f"not installed ({e}); `.venv/bin/pip install presidio-analyzer` to compare"
    try:
        logging.getLogger("presidio-analyzer").setLevel(logging.ERROR)
        note = "predefined pattern recognizers, "
        try:  # offline: tldextract (presidio's email check) uses its bundled suffix list
            tld = importlib.import_module("tldextract.tldextract")
            tld.TLD_EXTRACTOR.suffix_list_urls = ()
        except (ImportError, AttributeError):
            pass
        if hasattr(nlp, "NoOpNlpEngine"):
            engine = nlp.NoOpNlpEngine(models=[{"lang_code": "en", "model_name": "none"}])
            engine.load()
            note += "NoOpNlpEngine (no spaCy model)"
        else:  # older presidio: a blank spaCy pipeline, tokenizer only
            spacy = importlib.import_module("spacy")
            engine = nlp.SpacyNlpEngine(models=[{"lang_code": "en", "model_name": "blank"}])
            engine.nlp = {"en": spacy.blank("en")}
            note += 'SpacyNlpEngine over spacy.blank("en")'
        registry = analyzer.RecognizerRegistry()
        registry.load_predefined_recognizers(languages=["en"], nlp_engine=engine)
        eng = analyzer.AnalyzerEngine(registry=registry, nlp_engine=engine)
        eng.analyze(text="warm up: a@example.com 10.0.0.1", language="en")
    except Exception as e:  # anything: the comparison is optional
        return None, f"could not be set up ({type(e).__name__}: {e})"
    names = sorted({type(r).__name__ for r in registry.recognizers})
    try:
        version = importlib.metadata.version("presidio-analyzer")
    except importlib.metadata.PackageNotFoundError:
        version = "?"
    return eng, f"presidio-analyzer {version}: {note}, score threshold 0; {', '.join(names)}"


def presidio_spans(engine: Any, text: str) -> list[tuple[int, int, str]]:
    out = []
    for r in engine.analyze(text=text, language="en"):
        t = PRESIDIO_TYPES.get(r.entity_type, r.entity_type)
        if t == "IP":
            t = "IPV6" if ":" in text[r.start : r.end] else "IPV4"
        out.append((r.start, r.end, t))
    return out


def presidio_run(engine: Any, replies: Sequence[Reply]) -> None:
    for r in replies:
        engine.analyze(text=r.text, language="en")


# --------------------------------------------------------------------------- scoring


@dataclass
class Tally:
    n: int = 0  # planted entities
    found: int = 0  # contained in a detected span of their type
    exact: int = 0  # ... with the same bounds
    redacted: int = 0  # covered by detected spans of any type
    detections: int = 0
    fp: int = 0

    @property
    def recall(self) -> float:
        return self.found / self.n if self.n else float("nan")

    @property
    def precision(self) -> float:
        return (self.detections - self.fp) / self.detections if self.detections else float("nan")


@dataclass
class Scores:
    by_type: dict[str, Tally] = field(default_factory=lambda: defaultdict(Tally))
    by_fmt: dict[tuple[str, str], Tally] = field(default_factory=lambda: defaultdict(Tally))
    misses: dict[tuple[str, str], list[str]] = field(default_factory=lambda: defaultdict(list))
    fps: dict[str, list[str]] = field(default_factory=lambda: defaultdict(list))
    seconds: float = 0.0  # detection time over all documents

    def to_json(self) -> dict[str, Any]:
        return {
            "seconds": self.seconds,
            "by_type": {t: vars(a) for t, a in self.by_type.items()},
            "by_format": {f"{t}/{f}": vars(a) for (t, f), a in self.by_fmt.items()},
            "misses": {f"{t}/{f}": ex for (t, f), ex in self.misses.items()},
            "false_positives": self.fps,
        }


def covered(p: Planted, spans: Sequence[tuple[int, int, str]]) -> bool:
    pos = p.start
    for s, e, _ in sorted(spans):
        if s <= pos < e:
            pos = e
    return pos >= p.end


def context(text: str, s: int, e: int, width: int = 24) -> str:
    return repr(text[max(0, s - width) : e + width])


def score(docs: Sequence[Doc], detect: Detect) -> Scores:
    sc = Scores()
    t0 = time.perf_counter()
    found = [detect(d.text) for d in docs]
    sc.seconds = time.perf_counter() - t0
    for doc, spans in zip(docs, found, strict=True):
        for p in doc.planted:
            same_type = [(s, e) for s, e, t in spans if t == p.type]
            hit = any(s <= p.start and e >= p.end for s, e in same_type)
            tallies = [sc.by_fmt[(p.type, p.fmt)]] + ([sc.by_type[p.type]] if p.in_scope else [])
            for tally in tallies:
                tally.n += 1
                tally.found += hit
                tally.exact += (p.start, p.end) in same_type
                tally.redacted += covered(p, spans)
            if not hit:
                got = [f"{t} {doc.text[s:e]!r}" for s, e, t in spans if s < p.end and p.start < e]
                sc.misses[(p.type, p.fmt)].append(
                    f"{doc.text[p.start : p.end]!r} in {context(doc.text, p.start, p.end)}"
                    f" -> {'; '.join(got) or 'nothing'}"
                )
        for s, e, t in spans:
            if t not in TYPES:
                continue  # presidio's other types (URL, DATE_TIME …)
            sc.by_type[t].detections += 1
            if not any(p.type == t and s < p.end and p.start < e for p in doc.planted):
                sc.by_type[t].fp += 1
                why = doc.decoy or "a document with a planted entity"
                sc.fps[t].append(f"{doc.text[s:e]!r} in {context(doc.text, s, e)} ({why})")
    return sc


def ours(text: str) -> list[tuple[int, int, str]]:
    return [(s.start, s.end, s.type) for s in entities(text)]


# --------------------------------------------------------------------------- adversarial


def adversarial_docs(gen: Generator, per_disguise: int) -> list[Doc]:
    docs = [
        disguised_doc(gen, t, how)
        for t in TYPES
        for how in (*GENERIC_DISGUISES, *TYPE_DISGUISES.get(t, ()))
        for _ in range(per_disguise)
    ]
    docs += [disguised_lookalike(gen) for _ in range(len(docs))]
    gen.rnd.shuffle(docs)
    return docs


@dataclass
class Cut:
    n: int = 0  # cuts that carry the type's evidence
    ours: int = 0  # nothing of the entity emitted
    presidio: int = 0  # presidio's spans cover what is there of it
    no_evidence: int = 0  # cuts before the evidence (not scored)


def _evidence(entity_type: str) -> Any:
    for r in shared_default_recognizers():
        if r.entity_type == entity_type and getattr(r, "evidence", None) is not None:
            return r.evidence
    return None


def truncation(gen: Generator, per_type: int, presidio: Any) -> dict[str, Cut]:
    """Section 6: see the module docstring."""
    rnd = random.Random(gen.rnd.random())
    policy = Policy()
    out: dict[str, Cut] = {}
    for t in TYPES:
        evidence = _evidence(t)
        if evidence is None:
            continue
        c = out[t] = Cut()
        while c.n < per_type:
            how = rnd.choice(GENERIC_DISGUISES)
            doc = disguised_doc(gen, t, how) if rnd.random() < 0.5 else gen.doc(t)
            p = doc.planted[0]
            cut = rnd.randint(p.start + 1, p.end)
            text = doc.text[:cut]
            if evidence.search(fold(text[p.start :])[0]) is None:
                c.no_evidence += 1
                continue
            c.n += 1
            s = StreamScrubber(policy)
            emitted, pos = [], 0
            while pos < len(text):
                step = rnd.randint(1, 7)
                emitted.append(s.feed(text[pos : pos + step]))
                pos += step
            emitted.append(s.finish())
            head = scrub(text[: p.start], policy).text
            c.ours += "".join(emitted).startswith(head + "[")
            if presidio is not None:
                spans = presidio_spans(presidio, text)
                c.presidio += covered(Planted(p.start, cut, t, how), spans)
    return out


def truncation_table(cuts: dict[str, Cut], with_presidio: bool) -> str:
    rows = []
    for t, c in cuts.items():
        row: list[Any] = [t, c.n, c.no_evidence, pct(c.ours / c.n) if c.n else "-"]
        if with_presidio:
            row.append("n/a" if t in PRESIDIO_NONE else pct(c.presidio / c.n))
        rows.append(row)
    heads = ["type", "cuts with evidence", "cuts before it", "scrubbed (ours)"]
    return table(heads + (["scrubbed (presidio)"] if with_presidio else []), rows)


def held_back(replies: Sequence[Reply]) -> dict[str, float]:
    """Section 7: characters held back after each token; tokens before the first visible text."""
    held: list[float] = []
    first: list[float] = []
    for r in replies:
        s = StreamScrubber(Policy())
        seen = None
        for i, t in enumerate(r.tokens):
            if s.feed(t) and seen is None:
                seen = i + 1
            held.append(s.held_back)
        s.finish()
        first.append(seen if seen is not None else len(r.tokens))
    return {
        "held_p50": percentile(held, 50),
        "held_p99": percentile(held, 99),
        "held_max": max(held),
        "first_visible_tokens_p50": percentile(first, 50),
        "first_visible_tokens_p99": percentile(first, 99),
    }


# --------------------------------------------------------------------------- report


def pct(v: float) -> str:
    return "-" if v != v else f"{100 * v:.1f}%"


def throughput_table(tps: dict[tuple[str, str], list[float]]) -> str:
    rows = []
    for (name, path), v in tps.items():
        med = statistics.median(v)
        rows.append([name, path, f"{med:,.0f}", f"{min(v):,.0f}", 1e6 / med, med / GOAL_TOKENS_S])
    return table(["text", "path", "tokens/s", "worst round", "µs/token", "x goal"], rows)


def latency_table(lat: dict[str, dict[str, Any]], reply_tokens: int) -> str:
    what = {
        "filter": "ResponseFilter.feed, per chunk",
        "stream": "StreamScrubber.feed, per chunk",
        "whole": f"whole-text scrub, per {reply_tokens}-token reply",
    }
    rows = []
    for name, r in lat.items():
        for key, label in what.items():
            v = r[key]
            p50, p99 = percentile(v, 50), percentile(v, 99)
            rows.append([name, label, len(v), p50, p99, max(v), statistics.mean(v)])
    return table(["text", "what", "n", "p50", "p99", "max", "mean"], rows)


def quality_table(mine: Scores, theirs: Scores | None) -> str:
    heads = ["type", "n", "recall", "exact", "redacted", "FP", "precision"]
    if theirs is not None:
        heads += ["presidio recall", "presidio precision", "presidio FP"]
    rows = []
    for t in TYPES:
        a = mine.by_type[t]
        row: list[Any] = [t, a.n, pct(a.recall), pct(a.exact / a.n), pct(a.redacted / a.n)]
        row += [a.fp, pct(a.precision)]
        if theirs is not None:
            b = theirs.by_type[t]
            none = t in PRESIDIO_NONE
            row += ["n/a", "n/a", "-"] if none else [pct(b.recall), pct(b.precision), b.fp]
        rows.append(row)
    return table(heads, rows)


def format_table(mine: Scores, theirs: Scores | None) -> str:
    """Recall by format, rows where we or presidio missed something."""
    rows = []
    for (t, fmt), a in sorted(mine.by_fmt.items()):
        b = None if theirs is None or t in PRESIDIO_NONE else theirs.by_fmt[(t, fmt)]
        if a.found == a.n and (b is None or b.found == b.n):
            continue
        row = [t, fmt, a.n, pct(a.recall), pct(a.redacted / a.n)]
        if theirs is not None:
            row.append("n/a" if b is None else pct(b.recall))
        rows.append(row)
    heads = ["type", "format", "n", "recall", "redacted"] + (["presidio"] if theirs else [])
    return table(heads, rows) if rows else "(none)"


def examples(title: str, found: dict[Any, list[str]], k: int) -> str:
    lines = [title]
    for key, ex in sorted(found.items()):
        lines.append(f"  {' / '.join(key) if isinstance(key, tuple) else key}: {len(ex)}")
        lines += [f"    {e}" for e in ex[:k]]
    return "\n".join(lines if found else [title, "  (none)"])


SCORING = """\
Scoring: found = a detected span of the entity's type contains it; FP = a detection that
overlaps no planted entity of its type; 'redacted' = covered by detections of any type (not
leaked). Phone extensions (x123) are outside the scored span; phone numbers Faker writes as bare
digits are out of scope (own row, not in the totals). presidio's IP_ADDRESS counts as IPV6 when
it contains ':', else IPV4; its other types (URL, DATE_TIME …) count for 'redacted' only."""


# --------------------------------------------------------------------------- main


def pin(cpu: int | None) -> str:
    if not hasattr(os, "sched_setaffinity"):
        return "not pinned (no sched_setaffinity here)"
    cpus = sorted(os.sched_getaffinity(0))
    target = cpus[-1] if cpu is None else cpu
    try:
        os.sched_setaffinity(0, {target})
    except OSError as e:
        return f"not pinned ({e})"
    return f"pinned to CPU {target} of {len(cpus)} (os.sched_setaffinity)"


def main() -> None:
    ap = argparse.ArgumentParser(
        description=(__doc__ or "").split("\n\n")[0],
        epilog="Needs Faker (pip install faker); presidio-analyzer is optional.",
    )
    ap.add_argument("--tokens", type=int, default=20_000, help="tokens of prose per text")
    ap.add_argument("--reply-tokens", type=int, default=1000, help="tokens per reply")
    ap.add_argument("--pii-every", type=int, default=200, help="tokens between PII entities")
    ap.add_argument("--repeat", type=int, default=5, help="throughput rounds (median)")
    ap.add_argument("--per-type", type=int, default=300, help="planted entities per type")
    ap.add_argument(
        "--per-disguise", type=int, default=50, help="adversarial documents per type and disguise"
    )
    ap.add_argument("--cuts", type=int, default=200, help="truncated entities per type")
    ap.add_argument("--examples", type=int, default=3, help="misses/FPs shown per row")
    ap.add_argument("--seed", type=int, default=7)
    ap.add_argument("--cpu", type=int, help="CPU to pin to (default: the last one allowed)")
    ap.add_argument("--no-presidio", action="store_true", help="skip the presidio comparison")
    ap.add_argument("--json", help="write results here")
    args = ap.parse_args()

    faker = load_faker()
    pinned = pin(args.cpu)
    say(pinned)
    # Whole-text scrubbing screens texts with Hyperscan once its database has compiled (in the
    # background, as a service does at start): measured with it, as a running service is.
    if not prefilter.warm(shared_default_recognizers()).ready.wait(60):
        say("the Hyperscan prefilter is not available: whole-text scans run every recognizer")
    gen = Generator(faker, args.seed)
    policy = Policy()
    presidio, presidio_note = None, "skipped (--no-presidio)"
    if not args.no_presidio:
        say("setting up presidio")
        presidio, presidio_note = presidio_engine()
    say(f"presidio: {presidio_note}")

    # 1-2. Prose streams.
    say(f"generating {args.tokens} tokens of prose, clean and with PII every ~{args.pii_every}")
    n_chars = int(args.tokens * CHARS_PER_TOKEN * 1.2)  # cut to exactly --tokens below
    look = LOOKALIKE_EVERY * CHARS_PER_TOKEN
    clean, _ = gen.prose(n_chars, 0, look, PROSE_WEIGHTS)
    pii, planted = gen.prose(n_chars, args.pii_every * CHARS_PER_TOKEN, look, PROSE_WEIGHTS)
    cut = random.Random(args.seed)
    clean_toks = cut_tokens(clean, cut, CHARS_PER_TOKEN)[: args.tokens]
    pii_toks = cut_tokens(pii, cut, CHARS_PER_TOKEN)[: args.tokens]
    texts = {
        "clean": make_replies(clean_toks, args.reply_tokens),
        f"PII 1/{args.pii_every}": make_replies(pii_toks, args.reply_tokens),
    }
    n_pii = sum(p.end <= sum(map(len, pii_toks)) for p in planted)
    clean_hits = [s for r in texts["clean"] for s in entities(r.text)]
    tps = measure_throughput(texts, policy, args.repeat, presidio)
    say("timing each chunk")
    lat = {name: latencies(replies, policy) for name, replies in texts.items()}

    # 3-4. Corpus.
    n_docs = args.per_type * len(TYPES)
    say(f"generating the corpus: {args.per_type} per type x {len(TYPES)} + {n_docs} look-alikes")
    docs = [gen.doc(t) for t in TYPES for _ in range(args.per_type)]
    docs += [gen.doc(None) for _ in range(n_docs)]
    gen.rnd.shuffle(docs)
    say(f"scoring ours on {len(docs)} documents")
    mine = score(docs, ours)
    theirs = None
    if presidio is not None:
        say(f"scoring presidio on {len(docs)} documents")
        theirs = score(docs, lambda text: presidio_spans(presidio, text))

    # 5-7. Disguises, truncation, hold-back.
    adv_docs = adversarial_docs(gen, args.per_disguise)
    say(f"scoring the adversarial corpus: {len(adv_docs)} documents")
    adv_mine = score(adv_docs, ours)
    adv_theirs = None
    if presidio is not None:
        adv_theirs = score(adv_docs, lambda text: presidio_spans(presidio, text))
    say(f"cutting {args.cuts} entities per type")
    cuts = truncation(gen, args.cuts, presidio)
    holds = held_back(texts["clean"])

    load = os.getloadavg()[0] if hasattr(os, "getloadavg") else float("nan")
    kinds = ", ".join(sorted({s.type for s in clean_hits})) or "-"
    n_replies = len(texts["clean"])
    doc_tokens = sum(len(d.text) for d in docs) / CHARS_PER_TOKEN
    speed = f"ours (entities) {doc_tokens / mine.seconds:,.0f} tokens/s"
    if theirs is not None:
        speed += f", presidio (analyze) {doc_tokens / theirs.seconds:,.0f} tokens/s"
    same = all(r["same"] for r in lat.values())
    print("$ " + " ".join([Path(sys.executable).name, *sys.argv]))
    print(f"{pinned}; 1-min load average {load:.2f} at the end (CPUs shared with other work)")
    print(
        f"prose: {args.tokens} tokens (1-7 chars, mean 4) per text in {n_replies} replies of "
        f"{args.reply_tokens}; the PII text carries {n_pii} entities; policy: redact everything"
    )
    print(f"clean text: {len(clean_hits)} detections, all false positives ({kinds})")
    print(f"presidio: {presidio_note}")
    print(f"\n1. Throughput, median of {args.repeat} rounds (goal ≥ {GOAL_TOKENS_S:,} tokens/s)")
    print(throughput_table(tps))
    print(f"\n2. Added latency, µs (goal: p99 ≤ {GOAL_P99_US:.0f} µs per chunk on clean text)")
    print(latency_table(lat, args.reply_tokens))
    print(f"streamed output == whole-text scrub on every reply (both streaming paths): {same}")
    print(
        f"\n3. Recall / precision: {len(docs)} documents, {args.per_type} planted per type and "
        f"{n_docs} with a look-alike only (goal ≥ {GOAL_QUALITY:.2f})"
    )
    print(quality_table(mine, theirs))
    print(f"detection speed on the corpus, document by document: {speed}")
    print("\nRecall by format, where we or presidio missed any (every other format: 100%)")
    print(format_table(mine, theirs))
    k = args.examples
    print()
    print(examples(f"Our misses, up to {k} per format: entity in context -> found", mine.misses, k))
    print()
    print(examples(f"Our false positives, up to {k} per type", mine.fps, k))
    print(
        f"\n5. Adversarial: {len(adv_docs)} documents, {args.per_disguise} per type and disguise, "
        "half of them look-alikes carrying the generic disguises"
    )
    print(quality_table(adv_mine, adv_theirs))
    print("\nRecall by disguise, where we or presidio missed any")
    print(format_table(adv_mine, adv_theirs))
    print()
    print(examples(f"Our misses, up to {k} per disguise", adv_mine.misses, k))
    print()
    print(examples(f"Our false positives, up to {k} per type", adv_mine.fps, k))
    print(f"\n6. Truncation: turns that end inside an entity ({args.cuts} cuts per type)")
    print(truncation_table(cuts, presidio is not None))
    print("\n7. Hold-back on clean prose (StreamScrubber, 1-7 character tokens)")
    print(
        f"held back after each token: p50 {holds['held_p50']:.0f}, p99 {holds['held_p99']:.0f}, "
        f"max {holds['held_max']:.0f} characters; tokens fed before a reply's first visible "
        f"text: p50 {holds['first_visible_tokens_p50']:.0f}, "
        f"p99 {holds['first_visible_tokens_p99']:.0f}"
    )
    print()
    print(SCORING)

    write_json(
        args.json,
        {
            "args": vars(args),
            "pinned": pinned,
            "presidio": presidio_note,
            "clean_text_detections": len(clean_hits),
            "throughput_tokens_s": {f"{n}/{p}": v for (n, p), v in tps.items()},
            "latency_us": {
                name: {
                    key: {"p50": percentile(v, 50), "p99": percentile(v, 99), "max": max(v)}
                    for key, v in r.items()
                    if key != "same"
                }
                for name, r in lat.items()
            },
            "stream_equals_whole": same,
            "ours": mine.to_json(),
            "presidio_scores": theirs.to_json() if theirs is not None else None,
            "adversarial": adv_mine.to_json(),
            "adversarial_presidio": adv_theirs.to_json() if adv_theirs is not None else None,
            "truncation": {t: vars(c) for t, c in cuts.items()},
            "held_back": holds,
        },
    )


if __name__ == "__main__":
    main()
