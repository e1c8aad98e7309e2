"""Write Criteo-like click data with a planted ground truth, for the ``npy`` data source.

    python examples/make_ctr_data.py --out data/ctr --rows 1000000
    python examples/make_ctr_data.py --out data/ctr-tiny --rows 100000 --scale 0.001 --hashed

13 dense features and 26 categorical slots with power-law ids over Criteo-like cardinalities
(``--scale`` multiplies them); each label is drawn from a known logistic model of the row, so
the AUC of the true probabilities on the test split (printed, and kept in the manifest) is the
ceiling a model can reach. Shards are generated and written one at a time, so memory stays at
one shard whatever ``--rows`` is (see :mod:`pscluster.data.synthetic_ctr_npy` for the layout):

    <out>/train/x.dense-00000.npy (rows, 13) float32   x.sparse-00000.npy (rows, 26) int64
    <out>/train/y-00000.npy       (rows,) float32      <out>/test/... the same

A model takes both as keyword arguments: ``def forward(self, *, dense, sparse)``.
``<out>/manifest.json`` records the spec, the sizes and the Bayes AUC.
"""

from __future__ import annotations

import argparse
import json
import time
from collections.abc import Sequence
from pathlib import Path

from pscluster.data.synthetic_ctr import CtrSpec, criteo_cardinalities
from pscluster.data.synthetic_ctr_npy import write_npy


def parse(argv: Sequence[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--out", type=Path, required=True, help="folder to write")
    parser.add_argument("--rows", type=int, default=1_000_000, help="train split rows")
    parser.add_argument("--test-rows", type=int, default=100_000, help="test split rows")
    parser.add_argument("--shard-rows", type=int, default=1 << 18, help="rows a shard (~70 MB)")
    parser.add_argument("--scale", type=float, default=1.0, help="times Criteo's cardinalities")
    parser.add_argument("--alpha", type=float, default=1.1, help="power-law exponent of ids")
    parser.add_argument("--hashed", action="store_true", help="ids over the int64 range")
    parser.add_argument("--positive-rate", type=float, default=0.25)
    parser.add_argument("--seed", type=int, default=0)
    return parser.parse_args(argv)


def main(argv: Sequence[str] | None = None) -> int:
    args = parse(argv)
    spec = CtrSpec(
        seed=args.seed,
        cardinalities=criteo_cardinalities(args.scale),
        alpha=args.alpha,
        hashed=args.hashed,
        positive_rate=args.positive_rate,
    )
    start = time.monotonic()
    report = write_npy(spec, args.out, args.rows, args.shard_rows, args.test_rows)
    seconds = time.monotonic() - start
    manifest = {
        "format": "npy",
        "scale": args.scale,
        "spec": spec.to_json(),
        **report,
        "seconds": round(seconds, 2),
    }
    (args.out / "manifest.json").write_text(json.dumps(manifest))
    rows = args.rows + args.test_rows
    written = report["train"]["bytes"] + report["test"]["bytes"]
    ceiling = "n/a" if report["bayes_auc"] is None else f"{report['bayes_auc']:.4f}"
    print(
        f"wrote {args.out}: {rows} rows, {written / 1e6:.1f} MB in {seconds:.1f} s "
        f"({rows / seconds / 1e6:.2f} M rows/s); Bayes AUC on the test split {ceiling}"
    )
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
