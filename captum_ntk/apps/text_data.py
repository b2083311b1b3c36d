r"""A small labelled sentiment data set shipped with the package (offline, no downloads).

``captum_ntk/apps/data/reviews.csv`` holds 200 short product and movie review sentences written for
this project (100 positive, 100 negative; columns ``text,label`` with 1 = positive,
0 = negative), for tutorials and tests of Hugging Face text classifiers::

    train_texts, y_train, test_texts, y_test = load_reviews(test_size=0.25, seed=0)
    enc = tokenizer(train_texts, padding=True, return_tensors="pt")
"""

from __future__ import annotations

import csv
import io
from importlib import resources

import torch
from torch import Tensor

__all__ = ["load_reviews", "read_reviews"]

#: File name of the review sentences inside ``captum_ntk/data``.
REVIEWS_FILE = "reviews.csv"


def read_reviews() -> tuple[list[str], Tensor]:
    r"""All review sentences in file order.

    Returns:
        tuple: ``(texts, labels)``: a list of N strings and an (N,) int64 tensor with
        1 for positive and 0 for negative reviews.
    """
    raw = (
        resources.files("captum_ntk.apps")
        .joinpath("data", REVIEWS_FILE)
        .read_text(encoding="utf-8")
    )
    reader = csv.DictReader(io.StringIO(raw))
    if reader.fieldnames is None or not {"text", "label"} <= set(reader.fieldnames):
        raise ValueError(
            f"{REVIEWS_FILE} must have the columns text,label; got {reader.fieldnames}."
        )
    texts: list[str] = []
    labels: list[int] = []
    for row in reader:
        texts.append(row["text"])
        labels.append(int(row["label"]))
    return texts, torch.tensor(labels, dtype=torch.long)


def load_reviews(
    *,
    train_size: int | float | None = None,
    test_size: int | float | None = 0.25,
    seed: int = 0,
) -> tuple[list[str], Tensor, list[str], Tensor]:
    r"""The review sentences as a stratified, seeded train/test split.

    Args:
        train_size (int or float, optional): training examples (int) or fraction (float), as
                in ``sklearn.model_selection.train_test_split``. Default: None, the complement
                of ``test_size``.
        test_size (int or float, optional): test examples or fraction. Default: 0.25.
        seed (int): seed of the split. Default: 0.

    Returns:
        tuple: ``(train_texts, y_train, test_texts, y_test)``: lists of strings and (N,) int64
        label tensors (1 = positive, 0 = negative), both splits balanced between the classes.
    """
    from sklearn.model_selection import train_test_split

    texts, labels = read_reviews()
    index = list(range(len(texts)))
    train_idx, test_idx = train_test_split(
        index,
        train_size=train_size,
        test_size=test_size,
        random_state=seed,
        stratify=labels.numpy(),
    )
    return (
        [texts[i] for i in train_idx],
        labels[train_idx],
        [texts[i] for i in test_idx],
        labels[test_idx],
    )
