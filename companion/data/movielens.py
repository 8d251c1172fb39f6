"""MovieLens-100K from the ``recbole`` package's example data (read with pandas; recbole is never imported)."""

from __future__ import annotations

from dataclasses import dataclass
from functools import lru_cache

from .. import assets

ASSET = "movielens-100k"


@dataclass(frozen=True)
class MovieLens:
    """The three tables of MovieLens-100K (ids are the original 1-based MovieLens ids).

    * ``ratings``: user_id, item_id, rating (1-5), timestamp (Unix seconds) -- 100,000 rows
    * ``users``: user_id, age, gender ("M"/"F"), occupation, zip_code -- 943 rows
    * ``items``: item_id, title, year (nullable), genres (tuple of str) -- 1,682 rows
    """

    ratings: "pandas.DataFrame"  # noqa: F821
    users: "pandas.DataFrame"  # noqa: F821
    items: "pandas.DataFrame"  # noqa: F821


@lru_cache(maxsize=1)
def _read() -> MovieLens:
    import pandas as pd

    def read(ext: str, dtype: dict[str, str]) -> "pd.DataFrame":
        df = pd.read_csv(assets.path(ASSET, f"dataset_example/ml-100k/ml-100k.{ext}"), sep="\t",
                         dtype=str, keep_default_na=False)
        df.columns = [c.split(":")[0] for c in df.columns]  # "user_id:token" -> "user_id"
        return df.astype(dtype)

    ratings = read("inter", {"user_id": "int64", "item_id": "int64", "rating": "int64", "timestamp": "int64"})
    users = read("user", {"user_id": "int64", "age": "int64"})
    items = read("item", {"item_id": "int64"}).rename(columns={"movie_title": "title", "release_year": "year",
                                                              "class": "genres"})
    items["year"] = pd.to_numeric(items["year"], errors="coerce").astype("Int64")
    items["genres"] = items["genres"].map(lambda s: tuple(s.split()))
    return MovieLens(ratings=ratings, users=users, items=items)


def movielens_100k() -> MovieLens:
    """MovieLens-100K (Harper & Konstan, 2015): copies of the cached tables, safe to modify."""
    ml = _read()
    return MovieLens(ratings=ml.ratings.copy(), users=ml.users.copy(), items=ml.items.copy())
