"""A top-k SAE on the built-in toy model: reconstruction, dead features, and steering sentiment with its features.

1. Train a top-k SAE (Gao et al. 2024) at the block the demo steers sentiment at, streaming over the built-in
   corpus's training split; measure the fraction of variance explained, L0 and dead features on held-out text.
2. Score every feature (Arad et al. 2025: input and output scores).
3. Pick candidate "positive sentiment" features the usual, input-side way: the largest mean activation difference
   between the positive and negative texts of builtin:toy-sentiment (last token). Steer with each candidate's unit
   decoder row at relative coefficients (fractions of the mean residual norm, as the demo), on held-out toy reviews;
   score the positive rate (the demo's scorer), the KL to the plain model and the perplexity.
4. Compare: all candidates (unfiltered) against the candidates whose output score is above the median of all the
   SAE's features (filtered), against the difference of means from the same pairs (``actkit vector train``'s
   default), and against the plain model.

    python bench/sae_toy.py [--features 1024] [--k 16] [--tokens 100000] [--candidates 16] [--prompts 16]
                            [--out DIR] [--json]
"""

from __future__ import annotations

import argparse
import json
import statistics
import time
from typing import Any

import torch

import actkit
from actkit.builtin.corpus import iter_documents
from actkit.demo.steering import TOY, _reviews, reference_texts
from actkit.evaluate.shift import sweep
from actkit.sae import evaluate_sae, feature_scores, feature_vector, save_sae, train_sae
from actkit.steer import read_pairs, train_vector
from actkit.steer.directions import read_activations
from actkit.steer.pairs import pairs_path

from machine import cpu_model

COEFS = (0.4, 0.8)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--features", type=int, default=1024)
    parser.add_argument("--k", type=int, default=16)
    parser.add_argument("--tokens", type=int, default=100_000)
    parser.add_argument("--eval-tokens", type=int, default=20_000)
    parser.add_argument("--candidates", type=int, default=16)
    parser.add_argument("--prompts", type=int, default=16)
    parser.add_argument("--out", help="Also save the trained SAE to this folder.")
    parser.add_argument("--json", action="store_true")
    args = parser.parse_args()

    model, tokenizer = actkit.load("builtin:toy-dense")
    experiment = TOY[0]  # sentiment, the demo's experiment on the toy models
    pairs = read_pairs(pairs_path(experiment.pairs))
    layer, _ = experiment.block(model, tokenizer, pairs)
    site = f"resid_post.{layer}"
    out: dict[str, Any] = {"site": site, "torch": torch.__version__, "threads": torch.get_num_threads(),
                           "cpu": cpu_model(), "features": args.features, "k": args.k}

    start = time.perf_counter()
    sae, report = train_sae(model, tokenizer, (d.text for d in iter_documents("train")), site,
                            n_features=args.features, k=args.k, max_tokens=args.tokens, batch_size=32)
    out["training"] = report
    if args.out:
        save_sae(sae, args.out, overwrite=True)
    out["heldout"] = evaluate_sae(model, tokenizer, sae, (d.text for d in iter_documents("heldout")),
                                  max_tokens=args.eval_tokens)
    print(f"trained {args.features} features, k={args.k} at {site} on {report['tokens']} tokens in "
          f"{report['seconds']:.0f} s; held out: FVE {out['heldout']['fve']:.3f}, L0 {out['heldout']['l0']:.1f}, "
          f"dead {out['heldout']['dead_fraction']:.1%}", flush=True)

    t = time.perf_counter()
    scores = feature_scores(model, tokenizer, sae, (d.text for d in iter_documents("heldout")),
                            max_tokens=args.eval_tokens)
    out["scores_seconds"] = time.perf_counter() - t
    output = torch.tensor([r["output_score"] for r in scores])
    threshold = float(output.median())
    inputs = [r["input_score"] for r in scores if r["input_score"] is not None]
    out["output_score_median"] = threshold
    out["corr_input_output"] = _corr([(r["input_score"], r["output_score"]) for r in scores
                                      if r["input_score"] is not None])
    print(f"scored {len(scores)} features in {out['scores_seconds']:.0f} s: median output score {threshold:.3f}, "
          f"median input score {statistics.median(inputs):.3f}, correlation {out['corr_input_output']:.2f}",
          flush=True)

    pos, _ = read_activations(model, tokenizer, [p.positive for p in pairs], layer)
    neg, _ = read_activations(model, tokenizer, [p.negative for p in pairs], layer)
    diff = (sae.encode(pos[layer].float()) - sae.encode(neg[layer].float())).mean(0)
    candidates = diff.topk(args.candidates).indices.tolist()

    prompts = _reviews(args.prompts)
    reference = reference_texts("builtin:toy-dense")
    kwargs: dict[str, Any] = dict(texts=reference, relative=True, max_new_tokens=24)
    plain = sweep(model, tokenizer, feature_vector(sae, candidates[0]), (0.0,), prompts, "positive",
                  **kwargs)[0]
    out["plain"] = plain
    print(f"plain model: positive {plain['behaviour']:.2f}", flush=True)
    rows = []
    for i in candidates:
        swept = sweep(model, tokenizer, feature_vector(sae, i), COEFS, prompts, "positive", **kwargs)
        rows.append({"feature": i, "activation_difference": float(diff[i]),
                     "output_score": float(output[i]), "input_score": scores[i]["input_score"],
                     "top_tokens": scores[i]["top_tokens"], "rows": swept})
        print(f"feature {i:5d} output {output[i]:.3f}: " + ", ".join(
            f"coef {r['coef']}: positive {r['behaviour']:.2f} KL {r['kl']:.3f}" for r in swept), flush=True)
    out["candidates"] = rows
    vector = train_vector(model, tokenizer, pairs, [layer])
    out["mean_diff"] = sweep(model, tokenizer, vector, COEFS, prompts, "positive", **kwargs)
    kept = [r for r in rows if r["output_score"] > threshold]
    out["summary"] = {
        "plain": plain["behaviour"],
        "unfiltered": _mean_rows(rows),
        "filtered": _mean_rows(kept),
        "filtered_count": len(kept),
        "top_input_feature": {str(r["coef"]): r["behaviour"] for r in rows[0]["rows"]},
        "top_output_feature": ({str(r["coef"]): r["behaviour"]
                                for r in max(rows, key=lambda r: r["output_score"])["rows"]}),
        "mean_diff": {str(r["coef"]): r["behaviour"] for r in out["mean_diff"]},
        "mean_diff_kl": {str(r["coef"]): r["kl"] for r in out["mean_diff"]},
    }
    out["seconds"] = time.perf_counter() - start
    if args.json:
        print(json.dumps(out, indent=2))
        return
    s = out["summary"]
    print(f"positive rate on {len(prompts)} held-out reviews, plain model {s['plain']:.2f}")
    print(f"{'steering':40s} " + " ".join(f"coef {c:>4}" for c in COEFS))
    for name, values in ((f"unfiltered candidates (mean of {len(rows)})", s["unfiltered"]),
                         (f"output-score filtered (mean of {len(kept)})", s["filtered"]),
                         ("top candidate by activation difference", s["top_input_feature"]),
                         ("top candidate by output score", s["top_output_feature"]),
                         ("difference of means", s["mean_diff"])):
        print(f"{name:40s} " + " ".join(f"{values.get(str(c), float('nan')):9.2f}" for c in COEFS))
    print(f"({out['seconds']:.0f} s, torch {out['torch']}, {out['threads']} threads, {out['cpu']})")


def _mean_rows(rows: list[dict[str, Any]]) -> dict[str, float]:
    """Mean positive rate per coefficient over candidates."""
    if not rows:
        return {}
    return {str(c): statistics.mean(next(x["behaviour"] for x in r["rows"] if x["coef"] == c) for r in rows)
            for c in COEFS}


def _corr(pairs: list[tuple[float, float]]) -> float:
    if len(pairs) < 3:
        return float("nan")
    t = torch.tensor(pairs, dtype=torch.float64)
    return float(torch.corrcoef(t.T)[0, 1])


if __name__ == "__main__":
    main()
