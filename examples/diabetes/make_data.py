"""Write diabetes.csv: scikit-learn's diabetes data (442 rows, 10 features and the
target), which ships inside scikit-learn, so nothing is downloaded.

    python examples/diabetes/make_data.py diabetes.csv
"""

from __future__ import annotations

import sys

from sklearn.datasets import load_diabetes


def main(path: str) -> None:
    frame = load_diabetes(as_frame=True).frame
    frame.to_csv(path, index=False)


if __name__ == "__main__":
    main(sys.argv[1] if len(sys.argv) > 1 else "diabetes.csv")
