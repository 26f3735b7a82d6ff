"""Write real data for the demo and the tests: scikit-learn's breast-cancer set (shipped inside
the package, no download) split into data/train.parquet and data/test.parquet, each with an
integer `id` key and a `label` column.

    python prepare_data.py [--out data] [--extra N]   # --extra: N more training rows (new samples)
"""

from __future__ import annotations

import argparse
import os
import sys


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--out", default="data")
    p.add_argument("--extra", type=int, default=0,
                   help="append N held-back samples to train.parquet (a data change)")
    a = p.parse_args(argv)

    import pandas as pd
    from sklearn.datasets import load_breast_cancer

    ds = load_breast_cancer()
    cols = [f"f{i:02d}" for i in range(ds.data.shape[1])]
    df = pd.DataFrame(ds.data, columns=cols)
    df.insert(0, "id", range(len(df)))
    df["label"] = ds.target.astype("int64")
    test = df.iloc[::4]
    rest = df.drop(test.index)
    held_back = rest.iloc[-60:]
    train = rest.iloc[:-60]
    if a.extra:
        train = pd.concat([train, held_back.iloc[: a.extra]])
    os.makedirs(a.out, exist_ok=True)
    for name, frame in (("train", train), ("test", test)):
        dest = os.path.join(a.out, f"{name}.parquet")
        tmp = dest + ".tmp"
        frame.reset_index(drop=True).to_parquet(tmp, index=False)
        os.replace(tmp, dest)  # never write into a file DVC may have linked to its cache
    print(f"train={len(train)} test={len(test)} rows in {a.out}/")
    return 0


if __name__ == "__main__":
    sys.exit(main())
