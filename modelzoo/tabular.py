"""Tabular models as their exporters write them by default: a scikit-learn pipeline with string
categorical features (skl2onnx, ZipMap on: probabilities as a sequence of maps), LightGBM
(onnxmltools, ZipMap on) and XGBoost (onnxmltools, probabilities as a tensor) classifiers.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

COLORS = np.array(["red", "green", "blue", "amber"], dtype=object)
SHAPES = np.array(["round", "square", "flat"], dtype=object)
NUMERIC = ("n0", "n1", "n2")
#: The highest opset onnxmltools 1.16's LightGBM converter writes.
LIGHTGBM_OPSET = 15


@dataclass(frozen=True)
class TreeSize:
    features: int
    trees: int
    leaves: int
    rows: int


TREE_SIZES = {"full": TreeSize(32, 200, 31, 20_000), "small": TreeSize(8, 10, 7, 600)}
PIPELINE_ROWS = {"full": 5_000, "small": 400}


def pipeline_rows(batch: int, seed: int = 0) -> dict[str, np.ndarray]:
    """Rows of the pipeline's five inputs, one [N, 1] tensor per column (skl2onnx's layout):
    c0, c1 strings (one unseen category now and then: OneHotEncoder ignores it), n0-n2 FP32."""
    rng = np.random.default_rng(seed)
    c0 = rng.choice(COLORS, size=(batch, 1))
    c1 = rng.choice(SHAPES, size=(batch, 1))
    if batch > 3:
        c1[3, 0] = "unseen"
    num = rng.standard_normal((batch, 3)).astype(np.float32)
    feeds = {"c0": c0.astype(object), "c1": c1.astype(object)}
    feeds.update({name: num[:, i : i + 1].copy() for i, name in enumerate(NUMERIC)})
    return feeds


def _frame(feeds: dict[str, np.ndarray]):
    import pandas as pd

    return pd.DataFrame({name: np.ravel(value) for name, value in feeds.items()})


def _pipeline_labels(feeds: dict[str, np.ndarray]) -> np.ndarray:
    c0, c1 = np.ravel(feeds["c0"]), np.ravel(feeds["c1"])
    n0, n1 = np.ravel(feeds["n0"]), np.ravel(feeds["n1"])
    return ((c0 == "red") ^ (n0 > 0)).astype(np.int64) + ((c1 == "flat") & (n1 > 0.5))


def sklearn_pipeline(size_name: str):
    """(fitted pipeline, ONNX model): OneHotEncoder on c0/c1 and StandardScaler on n0-n2 in a
    ColumnTransformer, then LogisticRegression; converted with skl2onnx's defaults."""
    from skl2onnx import convert_sklearn
    from skl2onnx.common.data_types import FloatTensorType, StringTensorType
    from sklearn.compose import ColumnTransformer
    from sklearn.linear_model import LogisticRegression
    from sklearn.pipeline import Pipeline
    from sklearn.preprocessing import OneHotEncoder, StandardScaler

    train = pipeline_rows(PIPELINE_ROWS[size_name], seed=1)
    pipe = Pipeline(
        [
            (
                "features",
                ColumnTransformer(
                    [
                        ("categorical", OneHotEncoder(handle_unknown="ignore"), ["c0", "c1"]),
                        ("numeric", StandardScaler(), list(NUMERIC)),
                    ]
                ),
            ),
            ("classifier", LogisticRegression(max_iter=1000)),
        ]
    )
    pipe.fit(_frame(train), _pipeline_labels(train))
    initial = [("c0", StringTensorType([None, 1])), ("c1", StringTensorType([None, 1]))]
    initial += [(name, FloatTensorType([None, 1])) for name in NUMERIC]
    return pipe, convert_sklearn(pipe, initial_types=initial, target_opset=17)


def sklearn_reference(pipe, feeds: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
    frame = _frame({k: np.asarray(v) for k, v in feeds.items()})
    return {
        "output_label": pipe.predict(frame).astype(np.int64),
        "output_probability": pipe.predict_proba(frame).astype(np.float32),
    }


def tree_rows(size_name: str, batch: int, seed: int = 0) -> np.ndarray:
    rng = np.random.default_rng(seed)
    return rng.standard_normal((batch, TREE_SIZES[size_name].features), dtype=np.float32)


def _tree_data(size_name: str) -> tuple[np.ndarray, np.ndarray]:
    x = tree_rows(size_name, TREE_SIZES[size_name].rows, seed=1)
    y = (x[:, 0] + x[:, 1] ** 2 > 1).astype(np.int64) + (x[:, 2] * x[:, 3] > 0.3)
    return x, y


def lightgbm_classifier(size_name: str):
    """(fitted LGBMClassifier, ONNX model via onnxmltools with its defaults: ZipMap on)."""
    import lightgbm
    import onnxmltools
    from onnxmltools.convert.common.data_types import FloatTensorType

    size = TREE_SIZES[size_name]
    x, y = _tree_data(size_name)
    model = lightgbm.LGBMClassifier(
        n_estimators=size.trees, num_leaves=size.leaves, random_state=0, verbose=-1
    ).fit(x, y)
    onnx_model = onnxmltools.convert_lightgbm(
        model,
        initial_types=[("input", FloatTensorType([None, size.features]))],
        target_opset=LIGHTGBM_OPSET,
    )
    return model, onnx_model


def xgboost_classifier(size_name: str):
    """(fitted XGBClassifier, ONNX model via onnxmltools with its defaults)."""
    import onnxmltools
    import xgboost
    from onnxmltools.convert.common.data_types import FloatTensorType

    size = TREE_SIZES[size_name]
    x, y = _tree_data(size_name)
    depth = max(2, int(np.log2(size.leaves + 1)))
    model = xgboost.XGBClassifier(
        n_estimators=size.trees, max_depth=depth, random_state=0, n_jobs=1
    ).fit(x, y)
    onnx_model = onnxmltools.convert_xgboost(
        model,
        initial_types=[("input", FloatTensorType([None, size.features]))],
        target_opset=LIGHTGBM_OPSET,
    )
    return model, onnx_model


def classifier_reference(model, x: np.ndarray, label: str, probability: str) -> dict:
    return {
        label: model.predict(x).astype(np.int64),
        probability: model.predict_proba(x).astype(np.float32),
    }
