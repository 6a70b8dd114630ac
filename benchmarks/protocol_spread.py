"""How much does the evaluation protocol alone move a score?

Scores the same weights on the same synthetic 480p DAVIS-layout set under every
named protocol (``siammae_jax.eval.protocols``) and prints one row per
(weights, protocol) plus the spread (max - min) per metric:

    python benchmarks/protocol_spread.py --out build/protocol_spread \
        [--checkpoint WORKDIR [--skip_random]] [--videos 3 --frames 12]

Weights: a seed-0 random-init timm ViT-S/16 (``torch.manual_seed(0)``, timm's
``vit_small_patch16_224``, saved and read back with ``siammae_jax.load``;
without torch, our own seed-0 ViT-S/16, said so in the row) and, with
``--checkpoint``, a trained project checkpoint. Rows go to ``OUT/rows.jsonl``
as they are measured; ``OUT/table.md`` holds the table.
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

import numpy as np

from siammae_jax.data import synthetic
from siammae_jax.eval import encoder, evaluate, protocols

METRICS = ("J&F-Mean", "J-Mean", "F-Mean")


def _timm_vits16(out: Path):
    """(path or model, name) of a seed-0 random-init timm ViT-S/16."""
    try:
        import timm
        import torch
        from safetensors.torch import save_file
    except ImportError:
        return encoder.random_encoder(
            "vits16", seed=0
        ), "ours ViT-S/16 seed 0 (no torch)"
    torch.manual_seed(0)
    model = timm.create_model("vit_small_patch16_224", pretrained=False, num_classes=0)
    path = out / "timm_vits16_seed0.safetensors"
    save_file({k: v.contiguous() for k, v in model.state_dict().items()}, str(path))
    return path, "timm ViT-S/16 random init, seed 0"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", type=Path, required=True)
    parser.add_argument("--checkpoint", default=None)
    parser.add_argument("--videos", type=int, default=3)
    parser.add_argument("--frames", type=int, default=12)
    parser.add_argument("--protocols", default=",".join(protocols.names()))
    parser.add_argument(
        "--skip_random", action="store_true", help="score --checkpoint only"
    )
    args = parser.parse_args()
    args.out.mkdir(parents=True, exist_ok=True)
    data = args.out / "data"
    if not (data / "DAVIS").exists():
        synthetic.write_dataset(
            data, videos=args.videos, frames=args.frames, size=(480, 854)
        )
    weights = [] if args.skip_random else [_timm_vits16(args.out)]
    if args.checkpoint:
        weights.append((args.checkpoint, f"trained checkpoint {args.checkpoint}"))
    rows_path = args.out / "rows.jsonl"
    rows = []
    for features, name in weights:
        for protocol in args.protocols.split(","):
            start = time.perf_counter()
            result = evaluate(
                "davis", features, data / "DAVIS", protocol,
                args.out / f"{len(rows)}_{protocol}", overlays=1,
            )  # fmt: skip
            row = {
                "weights": name,
                "protocol": protocol,
                **{k: result["scores"][k] for k in METRICS},
                "input": sorted({tuple(s) for s in result["inputs"]["sizes"].values()}),
                "seconds": round(time.perf_counter() - start, 1),
            }
            rows.append(row)
            with rows_path.open("a") as f:
                f.write(json.dumps(row) + "\n")
            print(json.dumps(row), flush=True)
    lines = ["| weights | protocol | input | " + " | ".join(METRICS) + " |"]
    lines.append("|---" * (3 + len(METRICS)) + "|")
    for r in rows:
        size = ", ".join(f"{h}x{w}" for h, w in r["input"])
        values = " | ".join(f"{r[k]:.3f}" for k in METRICS)
        lines.append(f"| {r['weights']} | {r['protocol']} | {size} | {values} |")
    for name in dict.fromkeys(r["weights"] for r in rows):
        mine = [r for r in rows if r["weights"] == name]
        spread = " | ".join(f"{np.ptp([r[k] for r in mine]):.3f}" for k in METRICS)
        lines.append(f"| {name} | **spread (max - min)** | | {spread} |")
    (args.out / "table.md").write_text("\n".join(lines) + "\n")
    print("\n".join(lines))


if __name__ == "__main__":
    main()
