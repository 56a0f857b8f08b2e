"""What expert pruning costs: the statistics pass against a plain forward, and the time and memory of export.

Statistics: the same calibration batches (`token_batches`, right-padded) go through three variants, interleaved
after a warm-up so that drift on a shared machine hits all alike:

- ``plain``: the model's forward, no hooks (with the output head: what running the model over the text costs);
- ``body``: the model's blocks without the output head, no hooks (the statistics pass skips the head too);
- ``routed``: `expert_stats` as ``actkit prune experts`` runs it (each expert recomputed on its routed tokens);
- ``every``: `expert_stats(every_token=True)`, every expert on every token (what REAP's reference observer does).

The claim to keep true: ``routed / plain <= 1.3`` (median of per-round ratios); ``routed / body`` is printed too,
so that the part of the margin that comes from skipping the head is visible.

Export: `slice_experts` (a deep copy, then the expert tensors and router rows sliced) and `save_checkpoint`, timed
in a fresh child process that loads the model and nothing else, with the peak resident memory above the loaded
model's (Linux: VmHWM after resetting it through /proc/self/clear_refs; "n/a" where that is not allowed).

    python bench/experts.py [--model builtin:toy-moe] [--documents 128] [--batch-size 16] [--repeats 7]
                            [--warmup 1] [--threads N] [--keep 0.5]
"""

from __future__ import annotations

import argparse
import gc
import json
import platform
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import torch
import transformers

import actkit
from actkit.builtin.calibration import builtin_calibration
from actkit.compress.experts import expert_stats, plan_experts, slice_experts
from actkit.core.collect import context_length, token_batches
from actkit.models.checkpoint import save_checkpoint

from machine import cpu_model, interleaved


def _kib(field: str) -> int | None:
    try:
        for line in Path("/proc/self/status").read_text().splitlines():
            if line.startswith(field + ":"):
                return int(line.split()[1])
    except OSError:
        return None
    return None


def _reset_peak() -> bool:
    try:
        Path("/proc/self/clear_refs").write_text("5")
        return True
    except OSError:
        return False


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", default="builtin:toy-moe")
    parser.add_argument("--documents", type=int, default=128)
    parser.add_argument("--batch-size", type=int, default=16)
    parser.add_argument("--repeats", type=int, default=7)
    parser.add_argument("--warmup", type=int, default=1)
    parser.add_argument("--threads", type=int, default=None)
    parser.add_argument("--keep", type=float, default=0.5)
    parser.add_argument("--export-child", default=None, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.export_child is not None:
        export_child(args.model, args.export_child)
        return
    if args.threads:
        torch.set_num_threads(args.threads)
    print(f"torch {torch.__version__}, transformers {transformers.__version__}, python {platform.python_version()}, "
          f"{torch.get_num_threads()} threads, {cpu_model()}")
    model, tokenizer = actkit.load(args.model)
    calib = builtin_calibration(documents=args.documents)
    limit = context_length(model, tokenizer)
    batches = [(b.ids, b.mask.long()) for b in token_batches(calib.texts, tokenizer, limit=limit,
                                                             batch_size=args.batch_size)]
    tokens = sum(int(a.sum()) for _, a in batches)

    def plain() -> None:
        with torch.inference_mode():
            for ids, attention in batches:
                model(input_ids=ids, attention_mask=attention, use_cache=False)

    def body() -> None:
        with torch.inference_mode():
            for ids, attention in batches:
                model.base_model(input_ids=ids, attention_mask=attention, use_cache=False)

    runs = {
        "plain": plain,
        "body": body,
        "routed": lambda: expert_stats(model, tokenizer, calib.texts, batch_size=args.batch_size),
        "every": lambda: expert_stats(model, tokenizer, calib.texts, batch_size=args.batch_size, every_token=True),
    }
    times = interleaved(runs, args.repeats, args.warmup)
    print(f"\nstatistics over {len(calib.texts)} documents, {tokens} tokens, batches of {args.batch_size}; "
          f"median of {args.repeats} interleaved rounds")
    for name, values in times.items():
        print(f"  {name:>7}: {statistics.median(values):.3f} s  ({tokens / statistics.median(values):,.0f} tokens/s)")
    for name, base in (("routed", "plain"), ("routed", "body"), ("every", "plain"), ("body", "plain")):
        ratios = [t / p for t, p in zip(times[name], times[base], strict=True)]
        print(f"  {name} / {base}: median of per-round ratios {statistics.median(ratios):.3f} "
              f"(min {min(ratios):.3f}, max {max(ratios):.3f})")

    stats = expert_stats(model, tokenizer, calib.texts, batch_size=args.batch_size)
    plan = plan_experts(stats, "reap", args.keep)
    child = subprocess.run([sys.executable, __file__, "--model", args.model, "--export-child",
                            json.dumps({str(k): v for k, v in plan.keep.items()})],
                           capture_output=True, text=True, check=True, cwd=Path(__file__).parent)
    print(f"\nexport (reap, keep {args.keep}: {plan.count} of {stats.num_experts} experts per block), in a fresh "
          "process")
    print(child.stdout.rstrip())


def export_child(spec: str, keep_json: str) -> None:
    """Load the model, then slice and save it, measuring time and the peak memory above the loaded model."""
    model, tokenizer = actkit.load(spec)
    keep = {int(k): v for k, v in json.loads(keep_json).items()}
    size = sum(p.numel() * p.element_size() for p in model.parameters())
    gc.collect()
    rss = _kib("VmRSS")
    peak_ok = _reset_peak()
    start = time.perf_counter()
    pruned = slice_experts(model, keep)
    sliced = time.perf_counter() - start
    with tempfile.TemporaryDirectory() as tmp:
        start = time.perf_counter()
        folder = save_checkpoint(pruned, Path(tmp) / "out", report_name="report.json", report={},
                                 tokenizer=tokenizer)
        saved = time.perf_counter() - start
        disk = sum(f.stat().st_size for f in folder.iterdir())
    peak = _kib("VmHWM")
    extra = f"{(peak - rss) / 1024:.1f} MiB" if peak_ok and peak is not None and rss is not None else "n/a"
    kept = sum(p.numel() * p.element_size() for p in pruned.parameters())
    print(f"  model parameters {size / 2**20:.1f} MiB, after slicing {kept / 2**20:.1f} MiB; slice (deep copy + "
          f"slicing) {sliced:.3f} s; save_checkpoint {saved:.3f} s; checkpoint on disk {disk / 2**20:.1f} MiB")
    print(f"  peak resident memory above the loaded model during slice + save: {extra}")

if __name__ == "__main__":
    main()
