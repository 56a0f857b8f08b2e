"""Dense vs activation-sparse decoding on CPU: tokens/s of prefill and decode, whole model and MLP alone.

Model: a random-weight Llama of TinyLlama-1.1B's shape (hidden 2048, intermediate 5632, 32 heads, 4 KV heads,
vocabulary 32000) cut to ``--blocks`` blocks (default 4), float32. Random weights are fine for speed: the cost of
a product depends on the shapes and on how many input entries are kept, not on the values. TEAL thresholds are
calibrated on random token ids, so the achieved sparsity is reported next to each target.

Each run is a prefill of ``--prompt`` tokens then ``--new`` greedy decode steps with a KV cache (a hand-written
loop, so no sampling machinery is timed). The sparse runs use `SparseDecoder` (the single-token CPU path; the
prefill is masked dense, as there is nothing to skip in a matrix-matrix product). Dense and every sparse
configuration are interleaved run by run after a warm-up, and medians over ``--runs`` runs are reported. The MLP
is also timed alone on one token (block 0, a real decode-step input), interleaved the same way. One more dense
configuration runs a bfloat16 copy of the model, the dense way to halve the bytes read, for comparison with the
sparse path's bfloat16 tables.

The lm_head (32000 x 2048) stays dense in every configuration (TEAL and WINA sparsify the blocks' projections
only), so the whole-model ratio is bounded by it: with 4 blocks it is about a fifth of the bytes read per token.

    python bench/sparsity.py [--threads N] [--blocks 4] [--runs 20] [--prompt 32] [--new 8] [--json]
"""

from __future__ import annotations

import argparse
import copy
import json
import os
import platform
import statistics
import time
from collections.abc import Callable
from contextlib import AbstractContextManager, nullcontext
from typing import Any

import torch
import transformers

from actkit.compress.activation import SparsityStats, calibrate_teal_batches, plan_activation_sparsity
from actkit.compress.sparse_decode import SparseDecoder

from machine import cpu_model

SPARSITIES = (0.25, 0.5, 0.65)
DENSE_BF16 = "dense, bf16 weights"


def build_model(blocks: int) -> transformers.LlamaForCausalLM:
    torch.manual_seed(0)
    config = transformers.LlamaConfig(hidden_size=2048, intermediate_size=5632, num_hidden_layers=blocks,
                                      num_attention_heads=32, num_key_value_heads=4, vocab_size=32000,
                                      max_position_embeddings=2048)
    return transformers.LlamaForCausalLM(config).eval()


def decode_run(model: torch.nn.Module, prompt: torch.Tensor, new: int) -> tuple[float, float]:
    """Seconds for the prefill, and seconds per decoded token (greedy, KV cache)."""
    with torch.inference_mode():
        start = time.perf_counter()
        out = model(input_ids=prompt, use_cache=True)
        prefill = time.perf_counter() - start
        cache = out.cache
        token = out.logits[:, -1:].argmax(-1)
        start = time.perf_counter()
        for _ in range(new):
            out = model(input_ids=token, cache=cache, use_cache=True)
            cache = out.cache
            token = out.logits[:, -1:].argmax(-1)
        decode = (time.perf_counter() - start) / new
    return prefill, decode


def mlp_input(model: torch.nn.Module, prompt: torch.Tensor) -> torch.Tensor:
    """The input block 0's MLP sees at the first decode step after `prompt`."""
    seen: list[torch.Tensor] = []
    mlp = model.model.layers[0].mlp
    handle = mlp.register_forward_pre_hook(lambda m, args: seen.append(args[0].detach().clone()))
    try:
        with torch.inference_mode():
            out = model(input_ids=prompt, use_cache=True)
            model(input_ids=out.logits[:, -1:].argmax(-1), cache=out.cache, use_cache=True)
    finally:
        handle.remove()
    return seen[-1]


def timed(fn: Callable[[], Any]) -> float:
    start = time.perf_counter()
    fn()
    return time.perf_counter() - start


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--threads", type=int, default=torch.get_num_threads())
    parser.add_argument("--blocks", type=int, default=4)
    parser.add_argument("--runs", type=int, default=20)
    parser.add_argument("--warmup", type=int, default=2)
    parser.add_argument("--prompt", type=int, default=32)
    parser.add_argument("--new", type=int, default=8)
    parser.add_argument("--mlp-runs", type=int, default=60)
    parser.add_argument("--json", action="store_true", help="Also print the results as one JSON object.")
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    load_before = os.getloadavg()

    model = build_model(args.blocks)
    g = torch.Generator().manual_seed(0)
    calib = [(torch.randint(0, 32000, (4, 128), generator=g), torch.ones(4, 128, dtype=torch.long))
             for _ in range(2)]
    teal = calibrate_teal_batches(model, calib)
    prompt = torch.randint(0, 32000, (1, args.prompt), generator=g)

    configs: dict[str, SparseDecoder | None] = {"dense": None}
    for s in SPARSITIES:
        configs[f"teal:{s:g}"] = SparseDecoder(model, plan_activation_sparsity(model, f"teal:{s:g}", calibration=teal))
    configs["teal:0.5 bf16 tables"] = SparseDecoder(model, plan_activation_sparsity(model, "teal:0.5",
                                                                                   calibration=teal),
                                                    dtype=torch.bfloat16)
    configs["wina:0.5"] = SparseDecoder(model, plan_activation_sparsity(model, "wina:0.5"))

    bf16 = copy.deepcopy(model).to(torch.bfloat16)  # the dense alternative that also halves the bytes
    names = [*configs, DENSE_BF16]

    def active(dec: SparseDecoder | None) -> AbstractContextManager[SparsityStats | None]:
        return dec.active() if dec is not None else nullcontext(None)

    prefill: dict[str, list[float]] = {k: [] for k in names}
    decode: dict[str, list[float]] = {k: [] for k in names}
    achieved: dict[str, float] = {}
    for run in range(args.warmup + args.runs):
        for name in names:
            dec = configs.get(name)
            with active(dec) as stats:
                p, d = decode_run(bf16 if name == DENSE_BF16 else model, prompt, args.new)
            if run >= args.warmup:
                prefill[name].append(p)
                decode[name].append(d)
            if stats is not None:
                achieved[name] = stats.overall

    x = mlp_input(model, prompt)
    mlp = model.model.layers[0].mlp
    mlp_bf16, x_bf16 = bf16.model.layers[0].mlp, x.to(torch.bfloat16)
    mlp_names = [p.name for p in configs["teal:0.5"].plan.projections if ".layers.0.mlp." in p.name]  # type: ignore[union-attr]
    mlp_times: dict[str, list[float]] = {k: [] for k in names}
    mlp_achieved: dict[str, float] = {}
    with torch.inference_mode():
        for run in range(args.warmup + args.mlp_runs):
            for name in names:
                dec = configs.get(name)
                with active(dec) as stats:
                    t = timed(lambda: mlp_bf16(x_bf16)) if name == DENSE_BF16 else timed(lambda: mlp(x))
                if run >= args.warmup:
                    mlp_times[name].append(t)
                if stats is not None:
                    seen = sum(stats.seen.get(n, 0) for n in mlp_names)
                    mlp_achieved[name] = sum(stats.zeroed.get(n, 0) for n in mlp_names) / seen

    med = {k: {"prefill_s": statistics.median(prefill[k]), "decode_s": statistics.median(decode[k]),
               "mlp_s": statistics.median(mlp_times[k])} for k in names}
    dense = med["dense"]
    kernels = {name: sorted(set(dec.kernels.values())) for name, dec in configs.items() if dec is not None}
    result = {
        "machine": {"cpu": cpu_model(), "threads": args.threads, "torch": torch.__version__,
                    "transformers": transformers.__version__, "python": platform.python_version(),
                    "load_average_before": load_before, "load_average_after": os.getloadavg()},
        "model": {"blocks": args.blocks, "hidden": 2048, "intermediate": 5632, "vocab": 32000, "dtype": "float32"},
        "settings": {"runs": args.runs, "mlp_runs": args.mlp_runs, "prompt_tokens": args.prompt,
                     "decode_tokens": args.new},
        "configs": {k: {**med[k], "prefill_tok_s": args.prompt / med[k]["prefill_s"],
                        "decode_tok_s": 1 / med[k]["decode_s"],
                        "prefill_speedup": dense["prefill_s"] / med[k]["prefill_s"],
                        "decode_speedup": dense["decode_s"] / med[k]["decode_s"],
                        "mlp_speedup": dense["mlp_s"] / med[k]["mlp_s"],
                        "achieved_sparsity": achieved.get(k, 0.0), "mlp_achieved_sparsity": mlp_achieved.get(k, 0.0),
                        "kernels": kernels.get(k, [])} for k in names},
    }
    m = result["machine"]
    print(f"{m['cpu']} · {m['threads']} threads · torch {m['torch']} · {args.blocks} blocks of hidden 2048 / "
          f"intermediate 5632 · median of {args.runs} runs ({args.mlp_runs} for the MLP) · load average "
          f"{load_before[0]:.2f} -> {m['load_average_after'][0]:.2f}")
    print(f"{'config':22} {'achieved':>8} {'prefill tok/s':>13} {'x':>6} {'decode tok/s':>12} {'x':>6} "
          f"{'MLP ms':>7} {'MLP x':>6}  kernels")
    for name, c in result["configs"].items():
        print(f"{name:22} {c['achieved_sparsity']:8.3f} {c['prefill_tok_s']:13.1f} {c['prefill_speedup']:6.2f} "
              f"{c['decode_tok_s']:12.2f} {c['decode_speedup']:6.2f} {1e3 * c['mlp_s']:7.2f} "
              f"{c['mlp_speedup']:6.2f}  {','.join(c['kernels'])}")
    if args.json:
        print(json.dumps(result))


if __name__ == "__main__":
    main()
