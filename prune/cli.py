"""``sparse24 prune``: one-shot 2:4 pruning of a Llama-family HF checkpoint, layer by layer, resumable.

The command only parses flags into typed argument groups (:mod:`sparse24.prune.args`, plus each method's own group
declared by its pruner) and calls the typed functions underneath: :func:`prune_checkpoint` (the whole job) and
:func:`quick_eval` (dense vs pruned perplexity on the same windows, for ``--eval``). Nothing here names a method.
"""

from __future__ import annotations

import argparse
import gc
import hashlib
import json
import sys
import time
from dataclasses import dataclass, field
from functools import cached_property
from pathlib import Path
from typing import Any

from sparse24.prune.args import CalibArgs, EvalArgs, ModelArgs, OutputArgs, add_group, from_namespace, given

__all__ = ["add_arguments", "run", "PruneJob", "Pruned", "parse_job", "job_from_namespace", "prune_checkpoint",
           "quick_eval", "run_fingerprint"]

DESCRIPTION = """Prune every linear inside the decoder layers to 2:4 (2 of every 4 consecutive input weights kept).

How it works: --nsamples random windows of --seqlen tokens from the --calib text (seed --seed) are pushed through
the model one decoder layer at a time; each layer's linears are pruned from the statistics of their inputs, and the
layer's outputs feed the next layer (the pruned layer's; admm and ARMOR also carry the dense model's). On a CPU
with native bf16, SparseGPT's and Wanda's forwards run under bf16 autocast (about 2x faster in all; --forward-dtype
float32 turns it off; admm keeps float32, its own math being most of its time); statistics and pruning stay
float32/64. Embeddings and lm_head stay dense. Only one decoder layer is on the device at a time; progress is saved
to <out>.partial/ after every layer, so a killed run restarted with the same arguments resumes (bit-identical
result). A run that fails before finishing a layer leaves nothing behind; --out may never be, contain or sit inside
--model.

Methods (--method list prints them with the data each needs):
  magnitude  keep the 2 largest |w| of every 4; no data.
  wanda      score |W|*||x||_2 with x gathered through the already-pruned layers (the paper's and llm-compressor's
             protocol; torchao's WandaSparsifier scores |W|*sum(x^2) from one dense pass instead). No weight update.
  sparsegpt  optimal-brain-surgeon pruning column by column, updating the kept weights (best quality per second).
  sparsegpt-refit  SparseGPT's mask, then the kept weights re-fitted exactly (least squares on the layer Hessian).
  admm       (default) ADMM search for the 2:4 mask on the layer objective, then the exact refit; per row the best of
             ADMM, SparseGPT+refit and SparseGPT on that objective. Its target mixes in the dense model's layer
             output (--admm-dense-target 0.2: the dense model's activations are carried alongside, so each layer
             compensates part of the error of the layers pruned before it). On SmolLM2 (quick protocol) 34 % lower
             perplexity than SparseGPT (53.93 vs 81.34; 61.98 without the dense target) for about 7x its time (421
             vs 63 s, 2 threads), no extra parameters.
  armor      W ~ A'(2:4 core)B' with learned block-diagonal A', B', started from --armor-init's result (default
             admm) with A' = B' = I and refined on the layer's calibration error, accepting only improvements: never
             worse than its start per layer. Adds block*(in+out) parameters per linear; --armor-budget 5 picks the
             block size that fits 5 % of the model (SmolLM2: block 16, +3.6 %). The folder holds the dense
             equivalent (plain transformers loads it) plus armor.safetensors (packed cores and blocks), which sparse24
             eval loads as ArmorLinear modules. Its iterations are the cost, on top of the init method's.
  lowrank    W ~ Z + S*P: admm's 2:4 layer Z plus a rank-r term S*P, fitted jointly (the best rank-r term under the
             layer Hessian, then a new 2:4 mask and refit of Z for W - S*P, --lowrank-rounds times, keeping only
             rounds that lower the layer error): never worse than admm per layer. Adds rank*(in+out) parameters per
             linear; --lowrank-budget 5 picks the rank (SmolLM2: 22, +5.0 %). Saved in the SLoRB layout: plain
             transformers loads only the 2:4 part, sparse24 eval/load the whole model.
"""

DEFAULT_METHOD = "admm"  # the best one-shot method without extra parameters (benchmarks/results/oneshot_quality.md)

EPILOG = """examples:
  sparse24 prune --quick --eval          # ADMM on SmolLM2 with a dense-vs-pruned perplexity check
  sparse24 prune --method list
  sparse24 prune --method sparsegpt --out pruned/smollm2-sgpt --compressed
  sparse24 prune --model ./my-llama --method wanda --calib my.jsonl --nsamples 128 --seqlen 4096 --out pruned
  sparse24 prune --method magnitude --ignore '*.down_proj' --out pruned/mag
  sparse24 prune --method armor --quick --armor-budget 5   # ARMOR from admm, <= 5 % extra parameters
  sparse24 prune --method armor --armor-init sparsegpt --block-size 32 --armor-iters 50 --out armor
  sparse24 prune --method lowrank --quick --lowrank-budget 5 --eval   # 2:4 + rank 22, <= 5 % extra parameters
"""


def _pruners() -> dict[str, Any]:
    from sparse24.prune.base import PRUNERS, _load_builtin

    _load_builtin()
    return dict(sorted(PRUNERS.items()))


def add_arguments(p: argparse.ArgumentParser) -> None:
    """Every flag of ``sparse24 prune``: the shared groups, then each registered method's own group."""
    p.description, p.epilog = DESCRIPTION, EPILOG
    p.formatter_class = argparse.RawDescriptionHelpFormatter
    pruners = _pruners()
    p.add_argument("--method", default=DEFAULT_METHOD, help=f"{', '.join(pruners)}; 'list' prints them with the "
                   f"data each needs (default {DEFAULT_METHOD})")
    p.add_argument("--quick", action="store_true", help="small protocol for a first look (a few minutes of CPU): "
                   "fills every flag marked '--quick:' below that you did not give, and --out out/quick-<method>")
    add_group(p, ModelArgs, "model and compute")
    add_group(p, CalibArgs, "calibration")
    add_group(p, OutputArgs, "output")
    add_group(p, EvalArgs, "quick evaluation")
    for name, cls in pruners.items():
        doc = " ".join((cls.Args.__doc__ or "").split()).replace("``", "")
        if any("help" in f.metadata for f in cls.Args.__dataclass_fields__.values()):
            add_group(p, cls.Args, f"{name} (--method {name})", doc)


@dataclass
class PruneJob:
    """One ``sparse24 prune`` invocation, typed: the method with its own argument group, and the shared groups."""

    method: str = DEFAULT_METHOD
    method_args: Any = None  # the pruner's Args instance (None: its defaults)
    model: ModelArgs = field(default_factory=ModelArgs)
    calib: CalibArgs = field(default_factory=CalibArgs)
    output: OutputArgs = field(default_factory=OutputArgs)
    eval: EvalArgs = field(default_factory=EvalArgs)

    def prune(self, on_layer_done: Any = None) -> Pruned:
        """Run :func:`prune_checkpoint` with this job's groups."""
        return prune_checkpoint(self.method, self.method_args, model=self.model, calib=self.calib,
                                output=self.output, on_layer_done=on_layer_done)


def job_from_namespace(ns: argparse.Namespace) -> PruneJob:
    """The typed job from parsed flags; ``--quick`` fills only what the user did not give."""
    from sparse24.prune.base import pruner_class

    cls = pruner_class(ns.method)
    for name, other in _pruners().items():
        typed = given(other.Args, ns)
        if other is not cls and typed:
            raise ValueError(f"{typed[0]} is an option of --method {name}, not of --method {ns.method}; drop it or "
                             f"choose --method {name}")
    quick = ns.quick
    output = from_namespace(OutputArgs, ns, quick)
    if output.out is None and quick:
        output = from_namespace(OutputArgs, ns, quick, out=Path(f"out/quick-{ns.method}"))
    return PruneJob(ns.method, from_namespace(cls.Args, ns, quick), from_namespace(ModelArgs, ns, quick),
                    from_namespace(CalibArgs, ns, quick), output, from_namespace(EvalArgs, ns, quick))


def parse_job(argv: list[str]) -> PruneJob:
    """``sparse24 prune`` flags -> :class:`PruneJob` (for scripts and tests that want the CLI's exact parsing)."""
    p = argparse.ArgumentParser(prog="sparse24 prune")
    add_arguments(p)
    return job_from_namespace(p.parse_args(argv))


@dataclass
class Pruned:
    """What :func:`prune_checkpoint` returns: the pruned model and where everything went. The model and the tokenizer
    are loaded from ``out`` on first use unless the job had to assemble the model anyway (``assembled``): the job
    itself writes the checkpoint from the plain model and copies the tokenizer files, which keeps its peak memory low.
    """

    model_dir: Path
    out: Path
    ok: int  # pruned tensors that are exactly 2:4
    total: int
    seconds: float
    record: dict[str, Any]  # sparse24_config.json's "extra"
    files: list[Path]
    assembled: Any = None

    @cached_property
    def model(self) -> Any:
        if self.assembled is not None:
            return self.assembled
        from sparse24.loaders import load

        return load(self.out, tokenizer=False).model.eval()

    @cached_property
    def tokenizer(self) -> Any:
        from transformers import AutoTokenizer

        return AutoTokenizer.from_pretrained(self.out)


def _warn(msg: str) -> None:
    print(f"sparse24 prune: warning: {msg}", file=sys.stderr)


def run_fingerprint(pruner: Any, model_dir: Path, model: ModelArgs, calib: CalibArgs, calib_ids: Any,
                    dtype: Any, forward: Any = None) -> dict[str, Any]:
    """What a partial run must match to be resumed.

    The source model is fingerprinted by content: :func:`sparse24.fileio.file_fingerprint` of ``config.json``, the
    shard index and every ``*.safetensors`` shard (size + SHA-256 of the first and last MiB and 8 sampled chunks in
    between, which covers the safetensors header; the full SHA-256 for files under 4 MiB), so a different checkpoint
    of the same size and file names is refused. The calibration windows are hashed in full (SHA-256 of the token ids).
    """
    from sparse24.fileio import file_fingerprint

    names = ["config.json", "model.safetensors.index.json", *sorted(f.name for f in model_dir.glob("*.safetensors"))]
    files = {n: file_fingerprint(model_dir / n) for n in names if (model_dir / n).is_file()}
    calib_sha = hashlib.sha256(calib_ids.numpy().tobytes()).hexdigest()[:16] if calib_ids is not None else None
    return {"model_files": files, "method": pruner.name, "settings": pruner.settings(), "calib": calib.text,
            "nsamples": calib.nsamples, "seqlen": calib.seqlen, "seed": calib.seed, "calib_sha": calib_sha,
            "targets": model.targets, "ignore": model.ignore, "dtype": str(dtype), "batch_size": calib.batch_size,
            **({"forward_dtype": str(forward)} if forward is not None else {})}


def forward_autocast(name: str, device: str, dtype: Any, method_allows: bool = True) -> Any:
    """The autocast dtype of the calibration forwards (None: none) for ``--forward-dtype``: ``auto`` is bfloat16 only
    for float32 layers on a CPU with native bf16 (elsewhere the layers already run in the checkpoint's dtype) and a
    method whose cost is mostly those forwards (``Pruner.bf16_forwards``)."""
    import torch

    from sparse24.runtime import cpu_has_bf16

    if name == "auto":
        fast = device == "cpu" and dtype == torch.float32 and method_allows and cpu_has_bf16()
        return torch.bfloat16 if fast else None
    return None if name == "float32" else getattr(torch, name)


def _input_guard(model: ModelArgs) -> list[Any]:
    """What ``--out`` must stay clear of before the model is resolved: the folder, or the cache of converted models."""
    from sparse24.assets import DEFAULT_MODEL, cache_dir

    return [cache_dir() / "models"] if model.model == DEFAULT_MODEL else [model.model]


def _calibration(tokenizer: Any, calib: CalibArgs, model_dir: Path) -> Any:
    """``[nsamples, seqlen]`` token windows, warning when they exceed the model's context or reuse a short text."""
    from sparse24.texts import calibration_samples, read_text, tokenize_text

    try:
        max_pos = json.loads((model_dir / "config.json").read_text()).get("max_position_embeddings")
    except (OSError, ValueError):
        max_pos = None
    if max_pos and calib.seqlen > max_pos:
        _warn(f"--seqlen {calib.seqlen} exceeds the model's max_position_embeddings ({max_pos}); positions beyond it "
              f"are extrapolated and the statistics may not match real use: pass --seqlen {max_pos} or less")
    tokens = tokenize_text(tokenizer, read_text(calib.text))
    reads = calib.nsamples * calib.seqlen / max(len(tokens), 1)
    if reads > 2:
        _warn(f"the --calib text {calib.text!r} has {len(tokens):,} tokens; {calib.nsamples} windows x {calib.seqlen} "
              f"tokens read every token about {reads:.0f} times (overlapping windows), so the statistics come from a "
              "small text: use a longer --calib text, or fewer --nsamples / a shorter --seqlen")
    return calibration_samples(tokens, calib.nsamples, calib.seqlen, calib.seed)


def prune_checkpoint(method: str = DEFAULT_METHOD, method_args: Any = None, *, model: ModelArgs = ModelArgs(),
                     calib: CalibArgs = CalibArgs(), output: OutputArgs = OutputArgs(),
                     on_layer_done: Any = None) -> Pruned:
    """Prune ``model.model`` with ``method`` into ``output.out``, resumably; returns the model and where it went.

    The output path is validated before any work (it may never be, contain or sit inside the source); leftovers of a
    killed save are cleaned; a failure before the first finished layer leaves no ``<out>.partial/``.
    """
    import torch
    from sparse24.prune.base import get_pruner
    from sparse24.prune.driver import DriverArgs, prune_layers
    from sparse24.prune.export import plain_model, summary_table, write_plain
    from sparse24.prune.formats import WriteJob, get_writer
    from sparse24.prune.resume import WorkState
    from transformers import AutoTokenizer

    from sparse24.assets import resolve_model
    from sparse24.fileio import check_output_path, clean_stale_temps, copy_tokenizer_files
    from sparse24.runtime import release_memory, resolve_device, resolve_dtype

    pruner = get_pruner(method, method_args)
    writer = get_writer(output.format)
    if pruner.formats is not None and output.format not in pruner.formats:
        raise ValueError(f"--method {pruner.name} cannot be written as --format {output.format}; it supports "
                         f"{', '.join(pruner.formats)}")
    if output.out is None:
        raise ValueError("--out is required (the folder for the pruned model), or use --quick")
    out = Path(output.out)
    work = out.with_name(out.name + ".partial")
    for path in (out, work):
        check_output_path(path, _input_guard(model), overwrite=output.overwrite, allow_existing=path == work)
    model_dir = resolve_model(model.model)
    for path in (out, work):
        check_output_path(path, [model_dir], overwrite=output.overwrite, allow_existing=path == work)
    for line in clean_stale_temps(out) + clean_stale_temps(work):
        print(line)
    if model.threads:
        torch.set_num_threads(model.threads)
    device = resolve_device(model.device)
    dtype = resolve_dtype(model.dtype, device) or torch.float32
    calib_ids = _calibration(AutoTokenizer.from_pretrained(model_dir), calib, model_dir) \
        if pruner.stats != "none" else None
    gc.collect()
    release_memory()  # the tokenizer and the tokenized text (~200 MB on SmolLM2) are garbage from here on
    forward = forward_autocast(calib.forward_dtype, device, dtype, pruner.bf16_forwards)
    state = WorkState(work, run_fingerprint(pruner, model_dir, model, calib, calib_ids, dtype, forward),
                      fresh=output.overwrite)
    opts = DriverArgs(model.targets, model.ignore, device, dtype, calib.batch_size, output.progress, forward)
    t0 = time.time()
    try:
        outcome = prune_layers(model_dir, pruner, calib_ids, opts, state, on_layer_done)
    except BaseException:
        if state.discard_if_empty():
            print(f"removed {work}: no layer was finished, so a corrected rerun starts from scratch", file=sys.stderr)
        raise
    seconds = time.time() - t0
    gc.collect()
    release_memory()  # the layer loop's last activations
    plain = output.format == "sparse24" and pruner.plain_export
    if plain:  # written from the plain model: no SparseLinear modules or bool masks at the peak
        pruned, names, ok = plain_model(model_dir, outcome, dtype)
        total = len(names)
    else:
        pruned = pruner.assemble(model_dir, outcome, dtype)
        ok, total = pruner.check_24(pruned)
    record = {"method": pruner.name, "settings": pruner.settings(), "model_dir": str(model_dir.resolve()),
              "model_files": state.fingerprint["model_files"],
              "calibration": {"text": calib.text, "nsamples": calib.nsamples, "seqlen": calib.seqlen,
                              "seed": calib.seed, "forward_autocast": str(forward),
                              "windows": "uniform random token offsets into the tokenized text"
                              if calib_ids is not None else "none (data-free)",
                              "sha256_16": state.fingerprint["calib_sha"]},
              "targets": model.targets, "ignore": model.ignore, "compute_dtype": str(dtype), "device": device,
              "prune_seconds": round(seconds, 1), "check_24": f"{ok}/{total}", "versions": _versions(),
              "report": outcome.report}
    replace = output.overwrite or (out.is_dir() and not any(out.iterdir()))
    if plain:
        write_plain(pruned, names, out, method=pruner.name, record=record, compressed=output.compressed,
                    overwrite=replace)
        lines, pruned = [], None
        gc.collect()
        release_memory()
    else:
        lines = writer(WriteJob(pruned, out, pruner, record, output.compressed, replace))
    copy_tokenizer_files(model_dir, out)  # verbatim: loading a tokenizer here would add ~100 MB at the peak
    state.remove()
    print(summary_table(outcome.report))
    for line in lines:
        print(line)
    print(f"2:4 check: {ok}/{total} pruned tensors are exactly 2:4; {pruner.name} took {seconds:.1f}s")
    files = sorted(f for f in out.iterdir() if f.is_file())
    print(f"wrote {out.resolve()}/:")
    for f in files:
        print(f"  {f.name:<40} {f.stat().st_size / 2**20:9.2f} MiB")
    return Pruned(model_dir, out, ok, total, seconds, record, files, pruned)


def _versions() -> dict[str, str]:
    import torch
    import transformers

    from sparse24 import __version__

    return {"sparse24": __version__, "torch": torch.__version__, "transformers": transformers.__version__,
            "torch_threads": str(torch.get_num_threads())}


def quick_eval(result: Pruned, label: str, ev: EvalArgs, calib_seqlen: int, progress: bool = True) -> dict[str, Any]:
    """Dense vs pruned perplexity on ``ev.text`` (same windows for both); prints a table, writes quick_eval.json."""
    from transformers import AutoModelForCausalLM

    from sparse24.fileio import atomic_write_json
    from sparse24.perplexity import perplexity
    from sparse24.texts import read_text, tokenize_text

    seqlen = ev.seqlen or calib_seqlen
    tokens = tokenize_text(result.tokenizer, read_text(ev.text))
    dense = AutoModelForCausalLM.from_pretrained(result.model_dir, dtype="auto").eval()
    kw = {"max_windows": ev.windows or None, "progress": progress, "text_name": ev.text}
    rows = {"dense": perplexity(dense, tokens, seqlen, **kw), label: perplexity(result.model, tokens, seqlen, **kw)}
    p = rows["dense"]
    print(f"\nperplexity on {ev.text}: {p['windows']} windows x {seqlen} tokens ({p['tokens_scored']} "
          f"predictions of {p['tokens_in_text']} tokens in the text)")
    print(f"{'model':<12}{'ppl':>10}{'seconds':>10}")
    for name, r in rows.items():
        print(f"{name:<12}{r['ppl']:>10.3f}{r['seconds']:>10.1f}")
    path = atomic_write_json(result.out / "quick_eval.json", rows)
    print(f"wrote {path.resolve()}")
    return rows


def run(args: argparse.Namespace) -> int:
    """``sparse24 prune``: parse into typed groups, prune, optionally evaluate; 0 when every tensor is 2:4."""
    from sparse24.runtime import quiet_third_party

    quiet_third_party()
    if args.method == "list":
        from sparse24.prune.base import method_table
        from sparse24.prune.formats import writer_table

        print(method_table() + "\n" + writer_table())
        return 0
    job = job_from_namespace(args)
    result = job.prune()
    if job.eval.enabled:
        quick_eval(result, job.method, job.eval, job.calib.seqlen, job.output.progress)
    return 0 if result.ok == result.total else 1
