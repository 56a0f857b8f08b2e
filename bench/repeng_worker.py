"""Time repeng's vector training, driven round by round by `bench/steer.py` (run it with repeng's own Python).

repeng pins numpy<2, so it lives in its own virtual environment; this worker loads the same model folder and the
same pairs there and waits on stdin: each line ``run`` trains one vector and answers with one JSON line (seconds,
and the directions on the last round), so `bench/steer.py` can interleave repeng's rounds with actkit's in one
run. Standalone: it imports neither actkit nor anything from this repository.

    REPENG_PYTHON bench/repeng_worker.py MODEL_FOLDER PAIRS.jsonl --layers 12,11 --batch-size 8
"""

from __future__ import annotations

import argparse
import json
import sys
import time

import torch
from repeng import ControlVector, DatasetEntry
from transformers import AutoModelForCausalLM, AutoTokenizer


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("model")
    parser.add_argument("pairs")
    parser.add_argument("--layers", required=True, help="0-based block indices, comma-separated")
    parser.add_argument("--batch-size", type=int, default=8)
    parser.add_argument("--threads", type=int, default=None)
    args = parser.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    layers = [int(x) for x in args.layers.split(",")]
    tok = AutoTokenizer.from_pretrained(args.model)
    if tok.pad_token_id is None:
        tok.pad_token = tok.eos_token
    model = AutoModelForCausalLM.from_pretrained(args.model, dtype=torch.float32).eval()
    with open(args.pairs, encoding="utf-8") as f:
        rows = [json.loads(line) for line in f if line.strip()]
    dataset = [DatasetEntry(positive=r["positive"], negative=r["negative"]) for r in rows]
    import repeng

    print(json.dumps({"ready": True, "repeng": getattr(repeng, "__version__", "0.4.0"),
                      "threads": torch.get_num_threads()}), flush=True)
    for line in sys.stdin:
        if line.strip() != "run":
            break
        start = time.perf_counter()
        vector = ControlVector.train(model, tok, dataset, hidden_layers=layers, batch_size=args.batch_size,
                                     method="pca_diff")
        seconds = time.perf_counter() - start
        directions = {str(k): [float(x) for x in v] for k, v in vector.directions.items()}
        print(json.dumps({"seconds": seconds, "directions": directions}), flush=True)


if __name__ == "__main__":
    main()
