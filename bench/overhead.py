"""What reading activations costs: a forward pass that reduces every ``resid_post`` into a `NormHistogram`
through actkit's hook engine, against the same forward pass with no hooks.

The claim to keep true is that actkit reads only what was asked and reduces it on the fly, so a profile costs
about one plain forward pass (target: ratio <= 1.05). Tokenization is not measured: the token ids are made once.
Plain and hooked runs are interleaved, after a warm-up, so drift (thermal, other processes) hits all alike; the
report gives the ratio of medians and the median of per-round ratios.

Variants: ``plain`` (no hooks), ``raw hooks`` (one hand-written forward hook per block computing the norms: the
floor any hook-based tool pays), ``tap`` (`tap` with ``Read(NormHistogram())`` per site, as `collect` does),
``tap + NaN guard`` (plus `collect`'s finite check per site) and, when ``nnsight`` is importable, ``nnsight save``
(saving the same block outputs with a trace).

    python bench/overhead.py [--repeats 10] [--warmup 2] [--device cpu] [--threads N]
"""

from __future__ import annotations

import argparse
import platform
import statistics
import time
from collections.abc import Callable
from typing import Any

import torch
import transformers

from actkit import Anatomy, Capture, NormHistogram, Read, tap
from actkit.core.collect import finite_guard

from machine import cpu_model

VOCAB = 8192


def build_model(device: str) -> torch.nn.Module:
    torch.manual_seed(0)
    config = transformers.LlamaConfig(hidden_size=512, num_hidden_layers=8, num_attention_heads=8,
                                      intermediate_size=1376, vocab_size=VOCAB, max_position_embeddings=512)
    return transformers.LlamaForCausalLM(config).eval().to(device)



def variants(model: torch.nn.Module, inputs: dict[str, Any]) -> dict[str, Callable[[], None]]:
    sites = [str(s) for s in Anatomy.of(model).sites("resid_post")]
    blocks = Anatomy.of(model).blocks

    def plain() -> None:
        model(**inputs)

    def raw_hooks() -> None:
        norms: list[torch.Tensor] = []

        def hook(module: torch.nn.Module, args: tuple, output: torch.Tensor | tuple) -> None:
            x = output if isinstance(output, torch.Tensor) else output[0]
            norms.append(torch.linalg.vector_norm(x, dim=-1).double().cpu())

        handles = [block.register_forward_hook(hook) for block in blocks]
        try:
            model(**inputs)
        finally:
            for handle in handles:
                handle.remove()

    def tapped() -> None:
        with tap(model, read={s: Read(NormHistogram()) for s in sites}):
            model(**inputs)

    def guarded() -> None:
        where = {"batch": 0, "document": 0}
        reads = {s: [Read(NormHistogram()), Read(finite_guard(s, where))] for s in sites}
        with tap(model, read=reads):
            model(**inputs)

    out = {"plain": plain, "raw hooks": raw_hooks, "tap": tapped, "tap + NaN guard": guarded}
    try:
        from nnsight import NNsight
    except ImportError:
        return out
    traced = NNsight(model)

    def nnsight_save() -> None:
        with traced.trace(**inputs):
            saved = [traced.model.layers[i].output.save() for i in range(len(blocks))]  # noqa: F841

    out["nnsight save"] = nnsight_save
    return out


def hook_work(model: torch.nn.Module, inputs: dict[str, Any], repeats: int) -> tuple[float, float]:
    """Median seconds per forward of the reads alone (all sites), without and with the NaN guard.

    Timed on activations captured once, so it does not depend on the forward pass's own noise: a check on the
    ratios above when other processes share the machine.
    """
    sites = [str(s) for s in Anatomy.of(model).sites("resid_post")]
    captures = {s: Capture() for s in sites}
    with tap(model, read=captures):
        model(**inputs)
    values = [c.last for c in captures.values()]
    mask = inputs["attention_mask"].bool()
    guard = finite_guard("resid_post", {"batch": 0, "document": 0})
    plain: list[float] = []
    guarded: list[float] = []
    for _ in range(repeats):
        start = time.perf_counter()
        for x in values:
            NormHistogram().update(x, mask)
        plain.append(time.perf_counter() - start)
        start = time.perf_counter()
        for x in values:
            NormHistogram().update(x, mask)
            guard(x, mask, None)  # type: ignore[arg-type]  # the guard does not read its context
        guarded.append(time.perf_counter() - start)
    return statistics.median(plain), statistics.median(guarded)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--repeats", type=int, default=10, help="timed runs of each variant (median)")
    parser.add_argument("--warmup", type=int, default=2, help="untimed rounds first")
    parser.add_argument("--batch", type=int, default=8)
    parser.add_argument("--tokens", type=int, default=256)
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--threads", type=int, default=None, help="torch.set_num_threads (default: torch's)")
    args = parser.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)

    model = build_model(args.device)
    ids = torch.randint(0, VOCAB, (args.batch, args.tokens), generator=torch.Generator().manual_seed(0))
    inputs = {"input_ids": ids.to(args.device), "attention_mask": torch.ones_like(ids).to(args.device),
              "use_cache": False}
    runs = variants(model, inputs)
    sync = torch.cuda.synchronize if args.device.startswith("cuda") else (lambda: None)
    times: dict[str, list[float]] = {name: [] for name in runs}
    with torch.inference_mode():
        for round_ in range(args.warmup + args.repeats):
            for name, run in runs.items():  # interleaved: every round runs every variant once
                sync()
                start = time.perf_counter()
                run()
                sync()
                if round_ >= args.warmup:
                    times[name].append(time.perf_counter() - start)

    print(f"model: random Llama, hidden 512, 8 blocks, ffn 1376, vocab 8192; batch {args.batch} x {args.tokens} "
          f"tokens; {args.device}; torch.inference_mode; median of {args.repeats} after {args.warmup} warm-up")
    print(f"python {platform.python_version()}, torch {torch.__version__}, transformers {transformers.__version__}, "
          f"threads {torch.get_num_threads()}, cpu {cpu_model()}")
    base = statistics.median(times["plain"])
    print(f"{'variant':<16} {'median ms':>10} {'ratio':>7} {'paired':>7}")
    for name, values in times.items():
        paired = statistics.median(v / p for v, p in zip(values, times["plain"], strict=True))
        print(f"{name:<16} {statistics.median(values) * 1e3:>10.1f} {statistics.median(values) / base:>7.3f} "
              f"{paired:>7.3f}")
    with torch.inference_mode():
        alone, alone_guarded = hook_work(model, inputs, args.repeats)
    print(f"reads alone, on captured activations: {alone * 1e3:.1f} ms per forward ({alone / base:.1%} of plain), "
          f"with NaN guard {alone_guarded * 1e3:.1f} ms ({alone_guarded / base:.1%})")
    if "nnsight save" not in times:
        print("nnsight: not installed, skipped")


if __name__ == "__main__":
    main()
