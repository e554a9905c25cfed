"""The embedded synthetic world: users, a catalogue and logged interactions with known structure.

How the world is generated (what a model can learn from it):

* **Users** have a country (25, Zipf-distributed), a language (85% their country's language),
  an age bucket (6) and a hidden *type*: novelty seekers, classic lovers or neutral (the young
  lean to novelty). Each user prefers 1-3 categories (Dirichlet weights), has an affinity for
  every category and a **personal threshold**: categories below it (30-70% of them, never a
  preferred one) are never engaged with. Each user is active during a period of 30-400 days
  inside 2015-2025 and loyal to 0-3 creators of their preferred categories.
* **Items** come from creators (Zipf popularity) that are specialised in a primary and up to
  two secondary categories and publish mostly in one language. An item has a category (75% the
  creator's primary), a language, a creator, 1-5 tags (80% from its category's tag pool) and a
  release year (skewed to recent years). Item popularity is Zipf-like over a random ranking.
* **Latent factors** (dim ``dim``): item = category + creator + mean(tag) embeddings + noise,
  where creator and tag embeddings lean on their category's; user = weighted sum of preferred
  category embeddings + noise.
* **Engagement logit** of (u, i)::

      factor_scale * <u, v_i> + log_popularity_i + language_bonus * [same language]   (dot part)
      + 0.5 * affinity_u[category_i]    (-inf below the user's threshold)
      + recency_u(year_i)              (novelty: 1.5 exp(-age/2), classic: 1.5 sigmoid((age-12)/2);
                                        -inf for items released after the user's period starts)
      + loyalty_bonus * [u is loyal to creator_i]

  The first line is what a dot-product two-tower model expresses directly; the rest (hard
  thresholds, a non-linear function of year and a hidden user type, sparse loyalty) is where a
  re-scorer over ``[u, v, u*v]`` can beat the dot product.
* **Interactions**: each user draws a log-normal number of distinct items (mean
  ``interactions_per_user``) without replacement with probability proportional to
  ``exp(logit)`` (Gumbel-top-k), at uniformly random times inside their active period, so the
  time order is independent of preference. Every logged interaction is a click.
* **Labels** use a second, independent set of 8-dim factors ``m = 3 <g_u, h_i>`` plus item
  quality: ``like ~ Bernoulli(sigmoid(-1.3 + 1.8 tanh(1.5 m) + 0.8 q_i + 1.5 loyal + recency/1.5))``,
  ``share ~ Bernoulli(sigmoid(-5 + 2 relu(m) [q_i > 0] + loyal + 1.2 like))`` (rare),
  ``watch = clip(sigmoid(-0.4 + 1.2 m - 0.4 (n_tags - 3) + 0.8 like) + N(0, 0.1^2), 0, 1)``.
* **Split**: per user, time-ordered; the last ``test_fraction`` of the interactions to test, the
  ``valid_fraction`` before them to validation (at least one each).

Example::

    >>> from silverrec.data.synthetic import SyntheticConfig, generate
    >>> ds = generate(SyntheticConfig.preset("tiny"))
    >>> ds.schema.task_names
    ('click', 'like', 'share', 'watch')
"""
import dataclasses
import hashlib
import json
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import Dict, Iterable, Optional, Tuple, Union

import numpy as np
import torch

from silverrec.data._loading import time_fraction_split
from silverrec.data.dataset import FeatureTable, Interactions, JaggedColumn, RecDataset
from silverrec.data.synthetic_world import AGE_BUCKETS, World, creator_items, draw_world, recency_preference
from silverrec.schema import Feature, Schema, Task, TaskKind

GENERATOR_VERSION = 1  # bump when the generative story changes (invalidates caches)

VALUE_FORMULA = "0.6*like + 0.3*share + 0.1*watch"
"""The synthetic world's default Value Model formula (its four tasks weighted; see RecDataset.value_formula)."""


@dataclass(frozen=True)
class SyntheticConfig:
    """Size and shape of the synthetic world; every field is documented with why it exists.

    Args:
        num_users (int): U.
        num_items (int): N (the whole catalogue, including never-interacted items).
        interactions_per_user (float): mean of the log-normal number of interactions per user.
        min_interactions (int): floor per user (so that most users get train/valid/test rows).
        max_interactions (int): cap per user (bounds the top-k of the sampler).
        num_countries (int): user countries (Zipf-distributed).
        num_languages (int): languages of users and items.
        num_categories (int): item categories.
        num_creators (int): item creators.
        num_tags (int): tag vocabulary (each item has 1-5 tags).
        year_min (int): oldest release year. year_max (int): newest release year.
        dim (int): D of the latent click factors.
        zipf_exponent (float): item popularity ``rank ** -zipf_exponent`` (log-bias of the logit).
        factor_scale (float): weight of the latent inner product in the logit.
        language_bonus (float): logit bonus for items in the user's own language.
        loyalty_bonus (float): logit bonus for the creators a user is loyal to.
        start_time (int): start of the logging period (unix seconds; 2015-01-01).
        end_time (int): end of the logging period (unix seconds; 2026-01-01).
        history_length (int): ``Schema.history_length``.
        valid_fraction (float): per-user share of the latest interactions for validation.
        test_fraction (float): per-user share of the latest interactions for test.
        chunk_size (int): users scored per matmul in the sampler (memory ~ 12 * chunk * N bytes);
            part of the draw order, so changing it changes the sample (not its distribution).
        seed (int): everything is a deterministic function of the config and this seed.
    """

    num_users: int = 20_000
    num_items: int = 50_000
    interactions_per_user: float = 50.0
    min_interactions: int = 5
    max_interactions: int = 400
    num_countries: int = 25
    num_languages: int = 10
    num_categories: int = 30
    num_creators: int = 2_000
    num_tags: int = 3_000
    year_min: int = 1990
    year_max: int = 2025
    dim: int = 24
    zipf_exponent: float = 0.8
    factor_scale: float = 3.0
    language_bonus: float = 5.0
    loyalty_bonus: float = 2.0
    start_time: int = 1_420_070_400
    end_time: int = 1_767_225_600
    history_length: int = 50
    valid_fraction: float = 0.1
    test_fraction: float = 0.1
    chunk_size: int = 512
    seed: int = 0

    def __post_init__(self) -> None:
        for name in ("num_users", "num_items", "num_countries", "num_languages", "num_categories",
                     "num_creators", "num_tags", "dim", "history_length", "chunk_size", "min_interactions"):
            if getattr(self, name) < 1:
                raise ValueError(f"SyntheticConfig.{name} must be >= 1, got {getattr(self, name)}")
        if self.max_interactions < self.min_interactions:
            raise ValueError(f"SyntheticConfig.max_interactions={self.max_interactions} < "
                             f"min_interactions={self.min_interactions}")
        if not self.interactions_per_user > 0:
            raise ValueError(f"SyntheticConfig.interactions_per_user must be > 0, got {self.interactions_per_user}")
        if self.max_interactions > self.num_items:
            raise ValueError(f"SyntheticConfig.max_interactions={self.max_interactions} exceeds "
                             f"num_items={self.num_items}")
        if self.year_max < self.year_min:
            raise ValueError(f"SyntheticConfig.year_max={self.year_max} < year_min={self.year_min}")
        if not self.start_time < self.end_time:
            raise ValueError(f"SyntheticConfig.start_time={self.start_time} must be < end_time={self.end_time}")
        if 1970 + self.start_time / (365.2425 * 86400) < self.year_min:
            raise ValueError(f"SyntheticConfig.start_time={self.start_time} lies before year_min={self.year_min}")

    @staticmethod
    def preset(name: str, **overrides: object) -> "SyntheticConfig":
        """A named size: ``"default"`` (20k users, 50k items, ~1M interactions), ``"small"``
        (4k, 10k, ~150k) or ``"tiny"`` (300, 600, ~10k; for tests); ``overrides`` replace fields.

        >>> SyntheticConfig.preset("tiny", seed=3).num_users
        300
        """
        if name not in _PRESETS:
            raise ValueError(f"unknown synthetic preset {name!r}; expected one of {sorted(_PRESETS)}")
        return dataclasses.replace(SyntheticConfig(**_PRESETS[name]), **overrides)  # type: ignore[arg-type]

    def digest(self) -> str:
        """Hex digest of the config and generator version (cache key)."""
        blob = json.dumps({"v": GENERATOR_VERSION, **dataclasses.asdict(self)}, sort_keys=True)
        return hashlib.sha256(blob.encode()).hexdigest()[:20]


_PRESETS: Dict[str, Dict[str, object]] = {
    "default": {},
    "small": dict(num_users=4_000, num_items=10_000, interactions_per_user=36.0, num_creators=400, num_tags=1_000),
    "tiny": dict(num_users=300, num_items=600, interactions_per_user=31.0, max_interactions=200,
                 num_creators=40, num_tags=120),
}


def schema_of(cfg: SyntheticConfig, world: World) -> Schema:
    """The schema of a world: 3 user features, 6 item features (5 filterable), 4 tasks."""
    width = max(6, len(str(cfg.num_items - 1)))
    return Schema(
        user_features=(Feature("country", world.countries), Feature("language", world.languages),
                       Feature("age_bucket", AGE_BUCKETS)),
        item_features=(
            Feature("item_id", tuple(f"i{i:0{width}d}" for i in range(cfg.num_items))),
            Feature("category", world.categories, filterable=True),
            Feature("language", world.languages, filterable=True),
            Feature("creator", tuple(f"cr{k:05d}" for k in range(cfg.num_creators)), filterable=True),
            Feature("tags", world.tag_names, max_length=5, filterable=True),
            Feature("year", tuple(str(y) for y in range(cfg.year_min, cfg.year_max + 1)), filterable=True),
        ),
        tasks=(Task("click"), Task("like"), Task("share"), Task("watch", TaskKind.REGRESSION)),
        history_length=cfg.history_length,
    )


def sample_without_replacement(logits: torch.Tensor, n: torch.Tensor,
                               rng: np.random.Generator) -> Tuple[torch.Tensor, torch.Tensor]:
    """Draws ``n[b]`` distinct items per row with probability proportional to ``exp(logits)``.

    Gumbel-top-k: the ``n[b]`` largest ``logits + Gumbel(0, 1)`` of a row are a sample without
    replacement (successive sampling). Pairs with logits at or below -1e3 are never drawn, so a
    row yields ``min(n[b], #items above -1e3)`` items. The noise comes from NumPy's generator
    (much faster than torch's exponential sampler on CPU). ``logits`` is overwritten.

    Args:
        logits (torch.Tensor): float32 [B, N], contiguous; used as scratch space.
        n (torch.Tensor): int64 [B] items wanted per row.
        rng (np.random.Generator): source of randomness.

    Returns:
        (torch.Tensor, torch.Tensor): int64 row and item indices of the drawn pairs, grouped by
        row, each row's items in draw order.

    Example::

        >>> rows, items = sample_without_replacement(torch.zeros(2, 5), torch.tensor([2, 3]),
        ...                                          np.random.default_rng(0))
        >>> rows.tolist()
        [0, 0, 1, 1, 1]
    """
    if logits.dtype != torch.float32 or logits.dim() != 2:
        raise ValueError(f"logits must be float32 [B, N], got {logits.dtype} {tuple(logits.shape)}")
    if n.shape != logits.shape[:1]:
        raise ValueError(f"n must have shape ({logits.shape[0]},), got {tuple(n.shape)}")
    b, num = logits.shape
    if b == 0:
        empty = torch.zeros(0, dtype=torch.int64)
        return empty, empty.clone()
    return _top_n(logits, n, _neg_gumbel(rng, (b, num)))


def _neg_gumbel(rng: np.random.Generator, shape: Tuple[int, int]) -> np.ndarray:
    """float32 ``-Gumbel(0, 1)`` noise; the Gumbel is at most 16.7 in float32 (-inf for u = 0)."""
    noise = rng.random(shape, dtype=np.float32)
    with np.errstate(divide="ignore"):
        np.log(noise, out=noise)
        np.negative(noise, out=noise)
        np.log(noise, out=noise)
    return noise


def _top_n(logits: torch.Tensor, n: torch.Tensor, neg_gumbel: np.ndarray) -> Tuple[torch.Tensor, torch.Tensor]:
    logits.sub_(torch.from_numpy(neg_gumbel))  # impossible pairs stay below -1e3 + 17
    k = min(int(n.max()), logits.shape[1])
    vals, idx = logits.topk(k, dim=1)
    keep = (torch.arange(k)[None, :] < n[:, None]) & (vals > -1e3)
    rows = torch.nonzero(keep)[:, 0]
    return rows, idx[keep]


def _sample(world: World, cfg: SyntheticConfig, progress: bool) -> Tuple[np.ndarray, np.ndarray]:
    """Each user's distinct items, sampled chunk by chunk of users from the full logits.

    Items released after a user's active period starts have probability 0, so users are taken
    in order of that year and items in order of release year: a chunk only scores the prefix
    of items released up to its latest user's year (about half of all pairs are skipped; the
    skipped pairs are exactly the impossible ones, so the sample is unchanged in law).
    """
    lat = world.latents
    rng = np.random.default_rng(np.random.SeedSequence([cfg.seed, 2]))
    ue, ve = lat.extended(full=True)
    by_year = np.argsort(lat.item_year, kind="stable")  # sorted column -> item
    item_pos = np.empty_like(by_year)
    item_pos[by_year] = np.arange(by_year.size)  # item -> sorted column
    vt = ve[torch.from_numpy(by_year)].T.contiguous()  # [E, N] in release order
    user_year = np.floor(1970.0 + world.active_start / (365.2425 * 86400) - cfg.year_min).astype(np.int64)
    user_order = np.argsort(user_year, kind="stable")
    ci = creator_items(lat.item_creator, cfg.num_creators)
    n = torch.from_numpy(world.n_interactions)
    chunks = [user_order[a:a + cfg.chunk_size] for a in range(0, cfg.num_users, cfg.chunk_size)]
    widths = [int(np.searchsorted(lat.item_year[by_year], user_year[c].max(), side="right")) for c in chunks]
    steps: Iterable[int] = range(len(chunks))
    if progress:
        from tqdm import tqdm

        steps = tqdm(steps, desc="synthetic interactions", unit="chunk")
    users, items = [], []
    with ThreadPoolExecutor(1) as pool:  # NumPy draws the next chunk's noise while torch works
        pending = pool.submit(_neg_gumbel, rng, (chunks[0].size, widths[0]))
        for i in steps:
            noise = pending.result()
            if i + 1 < len(chunks):
                pending = pool.submit(_neg_gumbel, rng, (chunks[i + 1].size, widths[i + 1]))
            if widths[i] == 0:
                continue
            idx = chunks[i]
            scores = ue[torch.from_numpy(idx)] @ vt[:, :widths[i]]  # [B, N'] logits
            lat.add_loyalty(scores, idx, ci, item_pos)
            rows, cols = _top_n(scores, n[torch.from_numpy(idx)], noise)
            users.append(idx[rows.numpy()])
            items.append(by_year[cols.numpy()])
    return np.concatenate(users).astype(np.int64), np.concatenate(items).astype(np.int64)


def _labels(world: World, cfg: SyntheticConfig, user: np.ndarray, item: np.ndarray,
            rng: np.random.Generator) -> Dict[str, np.ndarray]:
    """like / share / watch from the label factors (see the module docstring); click is 1."""
    lat = world.latents
    m = 3.0 * np.einsum("md,md->m", lat.label_user[user], lat.label_item[item])
    q = lat.item_quality[item]
    k = cfg.num_creators
    loyal_keys = lat.loyal_creators + np.repeat(np.arange(cfg.num_users), np.diff(lat.loyal_offsets)) * k
    loyal = np.isin(user * k + lat.item_creator[item], loyal_keys).astype(np.float64)
    age = 1970.0 + world.active_start[user] / (365.2425 * 86400) - cfg.year_min - lat.item_year[item]
    recency = recency_preference(lat.user_type[user], age) / 1.5
    sig = lambda x: 1.0 / (1.0 + np.exp(-x))  # noqa: E731
    like = (rng.random(m.size) < sig(-1.3 + 1.8 * np.tanh(1.5 * m) + 0.8 * q + 1.5 * loyal + recency)).astype(np.float64)
    share = rng.random(m.size) < sig(-5.0 + 2.0 * np.maximum(m, 0) * (q > 0) + 1.0 * loyal + 1.2 * like)
    n_tags = np.diff(world.item_tags[1])[item]
    watch = np.clip(sig(-0.4 + 1.2 * m - 0.4 * (n_tags - 3) + 0.8 * like) + 0.1 * rng.standard_normal(m.size), 0, 1)
    return {"click": np.ones(m.size, np.float32), "like": like.astype(np.float32),
            "share": share.astype(np.float32), "watch": watch.astype(np.float32)}


def generate_with_world(config: SyntheticConfig, progress: bool = False) -> Tuple[RecDataset, World]:
    """Like :func:`generate`, also returning the :class:`~silverrec.data.synthetic_world.World`
    (its latents give oracle scores for tests and baselines)."""
    world = draw_world(config)
    user, item = _sample(world, config, progress)
    rng = np.random.default_rng(np.random.SeedSequence([config.seed, 3]))
    offset = np.floor(rng.random(user.size) * world.active_span[user]).astype(np.int64)
    timestamp = world.active_start[user] + offset
    order = np.lexsort((item, timestamp, user))  # by (user, time); item breaks exact ties
    user, item, timestamp = user[order], item[order], timestamp[order]
    labels = _labels(world, config, user, item, rng)
    schema = schema_of(config, world)
    lat = world.latents
    users = FeatureTable(config.num_users, {
        "country": JaggedColumn.from_ids(world.user_country),
        "language": JaggedColumn.from_ids(lat.user_language),
        "age_bucket": JaggedColumn.from_ids(world.user_age)})
    items = FeatureTable(config.num_items, {
        "item_id": JaggedColumn.from_ids(np.arange(config.num_items)),
        "category": JaggedColumn.from_ids(lat.item_category),
        "language": JaggedColumn.from_ids(lat.item_language),
        "creator": JaggedColumn.from_ids(lat.item_creator),
        "tags": JaggedColumn(*world.item_tags),
        "year": JaggedColumn.from_ids(lat.item_year)})
    split = time_fraction_split(user, timestamp, config.valid_fraction, config.test_fraction)
    ds = RecDataset(schema, users, items, Interactions(user, item, timestamp, labels), split,
                    value_formula=VALUE_FORMULA)
    return ds, world


def generate(config: SyntheticConfig, progress: bool = False) -> RecDataset:
    """Generates the synthetic data set described in the module docstring.

    Deterministic: the same config (seed included) gives identical arrays on a given machine.

    Args:
        config (SyntheticConfig): sizes, weights and seed.
        progress (bool): show a tqdm bar over user chunks (silent by default).

    Returns:
        RecDataset: U users, N items, M interactions sorted by (user, timestamp), split.

    Example::

        >>> ds = generate(SyntheticConfig.preset("tiny"))
        >>> ds.users.num_rows, ds.items.num_rows
        (300, 600)
    """
    return generate_with_world(config, progress)[0]


def synthetic_dataset(size: str = "default", seed: int = 0, num_users: Optional[int] = None,
                      num_items: Optional[int] = None, interactions_per_user: Optional[float] = None,
                      valid_fraction: Optional[float] = None, test_fraction: Optional[float] = None,
                      cache_dir: Optional[Union[str, Path]] = None, progress: bool = False) -> RecDataset:
    """Hydra-friendly builder: a preset with optional overrides, optionally cached on disk.

    Args:
        size (str): preset name: ``"default"``, ``"small"`` or ``"tiny"``.
        seed (int): random seed.
        num_users (Optional[int]): override of the preset's U.
        num_items (Optional[int]): override of the preset's N.
        interactions_per_user (Optional[float]): override of the mean interactions per user.
        valid_fraction (Optional[float]): override of the per-user validation share.
        test_fraction (Optional[float]): override of the per-user test share.
        cache_dir (Optional[str | Path]): directory of an ``.npz`` cache keyed by the config
            digest (see :mod:`silverrec.data.cache`); ``None`` always generates.
        progress (bool): show a progress bar while generating.

    Returns:
        RecDataset: the generated (or cached) data set.

    Example::

        >>> ds = synthetic_dataset("tiny", seed=1)
        >>> ds.schema.item_feature("category").filterable
        True
    """
    overrides = {k: v for k, v in dict(num_users=num_users, num_items=num_items,
                                        interactions_per_user=interactions_per_user,
                                        valid_fraction=valid_fraction, test_fraction=test_fraction).items()
                 if v is not None}
    config = SyntheticConfig.preset(size, seed=seed, **overrides)
    if cache_dir is None:
        return generate(config, progress)
    from silverrec.data.cache import cached

    ds = cached(Path(cache_dir), f"synthetic-{size}-{config.digest()}", lambda: generate(config, progress))
    ds.value_formula = VALUE_FORMULA  # entries cached before the field existed lack it
    return ds

