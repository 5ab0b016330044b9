"""llm-compressor 0.14 vs sparse24 on the same 2:4 job (driven by ``llmcompressor_compare.sh``).

    python llmcompressor_compare.py CALIB.pt {sparsegpt,wanda} OUT_DIR THREADS     # inside the llm-compressor venv
    python llmcompressor_compare.py --calib CALIB.pt NSAMPLES SEQLEN               # main venv: sparse24's windows
    python llmcompressor_compare.py --report WORK NSAMPLES SEQLEN THREADS VENV    # main venv: write the results file

The first form runs llm-compressor's ``oneshot`` with a 2:4 SparseGPT or Wanda modifier on sparse24's exact
calibration windows (``CALIB.pt``) and saves a plain HF folder. The second form reads the perplexity JSONs, the
``/usr/bin/time -v`` logs and the saved weights of both tools and writes
``benchmarks/results/llmcompressor_compare.md``.
"""

from __future__ import annotations

import datetime
import json
import re
import subprocess
import sys
import time
from pathlib import Path

RESULTS = Path(__file__).parent / "results"


def prune_with_llmcompressor(calib_path: str, method: str, out: str, threads: int) -> None:
    import torch
    from datasets import Dataset
    from transformers import AutoModelForCausalLM, AutoTokenizer

    torch.set_num_threads(threads)
    from llmcompressor import oneshot
    from llmcompressor.modifiers.pruning import SparseGPTModifier, WandaPruningModifier

    blob = torch.load(calib_path, weights_only=True)  # tensors and a string: no pickle code runs
    ids = blob["ids"]  # [nsamples, seqlen]
    model = AutoModelForCausalLM.from_pretrained(blob["model"], dtype=torch.float32)
    tok = AutoTokenizer.from_pretrained(blob["model"])
    ds = Dataset.from_dict({"input_ids": ids.tolist(), "attention_mask": torch.ones_like(ids).tolist()})
    cls = SparseGPTModifier if method == "sparsegpt" else WandaPruningModifier
    mod = cls(sparsity=0.5, mask_structure="2:4", targets=["Linear"], ignore=["re:.*lm_head"])  # block 128, damp 0.01
    t0 = time.time()
    oneshot(model=model, dataset=ds, recipe=[mod], max_seq_length=ids.shape[1],
            num_calibration_samples=ids.shape[0])
    wall = time.time() - t0
    model.save_pretrained(out, save_compressed=False)  # dense weights with zeros, like sparse24's folders
    tok.save_pretrained(out)
    cfg_path = Path(out) / "config.json"
    cfg = json.loads(cfg_path.read_text())
    if cfg.pop("quantization_config", None) is not None:  # dense format: nothing to decompress; plain HF loads it
        cfg_path.write_text(json.dumps(cfg, indent=2))
    print(json.dumps({"method": method, "oneshot_s": round(wall, 1), "threads": torch.get_num_threads()}))


def write_calib(path: Path, nsamples: int, seqlen: int) -> Path:
    """sparse24's exact calibration windows of SmolLM2 (``calib`` text, seed 0) as ``{"ids", "model"}`` for the
    llm-compressor side (read there with ``weights_only=True``)."""
    import torch
    from transformers import AutoTokenizer

    from sparse24.assets import resolve_model
    from sparse24.texts import calibration_samples, read_text, tokenize_text

    d = resolve_model("smollm2-135m")
    ids = calibration_samples(tokenize_text(AutoTokenizer.from_pretrained(d), read_text("calib")), nsamples, seqlen, 0)
    path.parent.mkdir(parents=True, exist_ok=True)
    torch.save({"ids": ids, "model": str(d)}, path)
    return path


def oneshot_seconds(log: Path) -> float:
    """The ``oneshot`` wall time that :func:`prune_with_llmcompressor` prints as its last line."""
    return json.loads(log.read_text().strip().splitlines()[-1])["oneshot_s"]


def _time_log(path: Path) -> dict:
    text = path.read_text()
    wall = re.search(r"Elapsed \(wall clock\) time .*: (\S+)", text).group(1)
    parts = [float(p) for p in wall.split(":")]
    secs = sum(p * 60 ** i for i, p in enumerate(reversed(parts)))
    rss = int(re.search(r"Maximum resident set size \(kbytes\): (\d+)", text).group(1))
    cpu = sum(float(re.search(rf"{k} time \(seconds\): (\S+)", text).group(1)) for k in ("User", "System"))
    return {"process_wall_s": round(secs, 1), "process_cpu_s": round(cpu, 1), "peak_rss_mb": round(rss / 1024)}


def check_24(folder: Path) -> str:
    """Decoder linears whose weight keeps at most 2 of every 4 along the input dim, over all decoder linears."""
    from safetensors.torch import load_file

    sd = {}
    for f in sorted(folder.glob("*.safetensors")):
        sd.update(load_file(str(f)))
    keys = [k for k in sd if ".layers." in k and k.endswith("proj.weight")]
    ok = sum(int(((sd[k].reshape(-1, 4) != 0).sum(-1) <= 2).all()) for k in keys)
    return f"{ok}/{len(keys)}"


def _ratios(rows: dict[str, dict]) -> list[str]:
    """sparse24 / llm-compressor per method: the issue's targets are time <= 0.5x, RSS <= 1x, perplexity <= 1x."""
    out = ["sparse24 / llm-compressor, same method (targets: prune time <= 0.5, peak RSS <= 1, perplexity <= 1):", "",
           "| method | prune s | process wall s | process CPU s | peak RSS | ppl@2048 | ppl@512 | sparse24 forward "
           "autocast |", "|---|---:|---:|---:|---:|---:|---:|---|"]
    for method in ("sparsegpt", "wanda"):
        a, b = rows[f"s24-{method}"], rows[f"llmc-{method}"]
        keys = ("oneshot_s", "process_wall_s", "process_cpu_s", "peak_rss_mb", "ppl@2048", "ppl@512")
        cells = [f"{a[k] / b[k]:.2f}" for k in keys]
        out.append(f"| {method} | " + " | ".join(cells) + f" | {a.get('forward_autocast', '?')} |")
    return out + [""]


def _notes() -> list[str]:
    """The hand-written reading (``llmcompressor_compare_notes.md``), kept apart so a rerun never erases it."""
    path = RESULTS / "llmcompressor_compare_notes.md"
    return [path.read_text(encoding="utf-8").rstrip(), ""] if path.is_file() else []


def report(work: Path, nsamples: int, seqlen: int, threads: int, venv: str) -> None:
    rows = {}
    for tool in ("llmc", "s24"):
        for method in ("sparsegpt", "wanda"):
            name = f"{tool}-{method}"
            r = {f"ppl@{s}": json.loads((work / f"{name}.ppl{s}.json").read_text())["perplexity"]["boolq"]["ppl"]
                 for s in (2048, 512)}
            r.update(_time_log(work / f"{name}.time"), check_24=check_24(work / name))
            if tool == "llmc":
                r["oneshot_s"] = oneshot_seconds(work / f"{name}.log")
            else:
                record = json.loads((work / name / "sparse24_config.json").read_text())
                r["oneshot_s"] = record["extra"]["prune_seconds"]
                r["forward_autocast"] = record["extra"]["calibration"].get("forward_autocast", "None (float32)")
            rows[name] = r
    vers = subprocess.run([f"{venv}/bin/python", "-c", "import importlib.metadata as m; print(*(m.version(p) for p in "
                           "('llmcompressor', 'torch', 'transformers')))"],  # metadata only: importing logs to stdout
                          capture_output=True, text=True).stdout.split()
    import torch
    import transformers

    load = Path("/proc/loadavg").read_text().split()[:3]
    head = ("| tool | method | ppl@2048 (8 win) | ppl@512 (32 win) | prune s | process wall s | process CPU s | "
            "peak RSS MB | 2:4 |")
    lines = [head, "|---|---|---|---|---|---|---|---|---|"]
    for name, r in rows.items():
        tool = "llm-compressor" if name.startswith("llmc") else "sparse24"
        lines.append(f"| {tool} | {name.split('-')[1]} | {r['ppl@2048']:.2f} | {r['ppl@512']:.2f} | {r['oneshot_s']} "
                     f"| {r['process_wall_s']} | {r['process_cpu_s']} | {r['peak_rss_mb']} | {r['check_24']} |")
    text = "\n".join([
        "# sparse24 vs llm-compressor: 2:4 SparseGPT / Wanda on SmolLM2-135M-Instruct", "",
        f"Measured {datetime.date.today()} on the CPU, {threads} threads for both tools (torch.set_num_threads and "
        f"OMP/MKL_NUM_THREADS); load average at the end {' '.join(load)} (other jobs shared the 2 cores, so wall "
        f"times are under contention). llm-compressor {vers[0] if vers else '?'} with torch "
        f"{vers[1] if len(vers) > 1 else '?'}, transformers {vers[2] if len(vers) > 2 else '?'} in its own venv; "
        f"sparse24 with torch {torch.__version__}, transformers {transformers.__version__}.", "",
        f"Same model (float32), same {nsamples} x {seqlen} calibration windows (sparse24's `calib` windows, seed 0, "
        "passed to llm-compressor as a tokenized dataset), same perplexity windows (BoolQ passages, the first 8 x "
        "2048 and 32 x 512 tokens), both evaluated with `sparse24 eval`. `prune s` is the pruning call alone "
        "(llm-compressor `oneshot`, sparse24's layer loop); process wall, CPU (user + system, the measure least "
        "moved by other jobs on the cores) and peak RSS are of the whole process.", "",
        *lines, "", *_ratios(rows), *_notes()])
    RESULTS.mkdir(parents=True, exist_ok=True)
    (RESULTS / "llmcompressor_compare.json").write_text(json.dumps(rows, indent=2))
    (RESULTS / "llmcompressor_compare.md").write_text(text)
    print(text)


if __name__ == "__main__":
    if sys.argv[1] == "--calib":
        if __package__ in (None, ""):
            sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
        write_calib(Path(sys.argv[2]), int(sys.argv[3]), int(sys.argv[4]))
    elif sys.argv[1] == "--report":
        report(Path(sys.argv[2]), int(sys.argv[3]), int(sys.argv[4]), int(sys.argv[5]), sys.argv[6])
    else:
        prune_with_llmcompressor(sys.argv[1], sys.argv[2], sys.argv[3], int(sys.argv[4]))
