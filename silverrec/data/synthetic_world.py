"""The hidden state of the synthetic world: attributes, latent factors, engagement logits.

:mod:`silverrec.data.synthetic` describes the generative story and turns a world into a
:class:`~silverrec.data.dataset.RecDataset`; this module draws the world (``draw_world``) and
keeps its latents (:class:`WorldLatents`), so that tests and baselines can compare a model with
the oracle that produced the data (``WorldLatents.logits``).

Letters: U users, N items, C categories, L languages, Y years, K creators, D factor dim.
"""
from dataclasses import dataclass
from typing import TYPE_CHECKING, Optional, Tuple

import numpy as np
import torch

if TYPE_CHECKING:  # pragma: no cover
    from silverrec.data.synthetic import SyntheticConfig

LANGUAGES = ("en", "es", "pt", "fr", "de", "it", "ja", "ko", "zh", "ru")
# (country, home language), most populous first
COUNTRIES = (("us", "en"), ("in", "en"), ("br", "pt"), ("gb", "en"), ("mx", "es"), ("de", "de"),
             ("fr", "fr"), ("jp", "ja"), ("es", "es"), ("it", "it"), ("kr", "ko"), ("ru", "ru"),
             ("cn", "zh"), ("ca", "en"), ("ar", "es"), ("au", "en"), ("co", "es"), ("pt", "pt"),
             ("tw", "zh"), ("at", "de"), ("be", "fr"), ("ch", "de"), ("cl", "es"), ("ng", "en"), ("za", "en"))
CATEGORIES = ("comedy", "music", "gaming", "sports", "news", "drama", "action", "documentary", "cooking",
              "travel", "science", "history", "fashion", "beauty", "fitness", "kids", "animation", "horror",
              "romance", "thriller", "scifi", "fantasy", "tech", "finance", "education", "nature", "art",
              "diy", "pets", "podcasts")
AGE_BUCKETS = ("13-17", "18-24", "25-34", "35-44", "45-54", "55+")
_AGE_P = np.array([0.08, 0.25, 0.27, 0.20, 0.12, 0.08])
_TAGS_PER_ITEM_P = np.array([0.2, 0.3, 0.25, 0.15, 0.1])  # 1..5 tags
NEUTRAL, NOVELTY, CLASSIC = 0, 1, 2  # user types (taste for new vs old releases)
_MASKED = -1.0e4  # logit of a (user, item) pair that is never engaged with
_SECONDS_PER_YEAR = 365.2425 * 86400


def _names(builtin: Tuple[str, ...], n: int, prefix: str) -> Tuple[str, ...]:
    return builtin[:n] if n <= len(builtin) else tuple(f"{prefix}{i:02d}" for i in range(n))


def _zipf(n: int, a: float) -> np.ndarray:
    p = 1.0 / np.arange(1, n + 1) ** a
    return p / p.sum()


@dataclass
class WorldLatents:
    """Hidden variables of a synthetic world (nothing here is visible to a model).

    Args:
        user_factor (torch.Tensor): float32 [U, D] taste vector (mixture of preferred categories).
        item_factor (torch.Tensor): float32 [N, D] (category + creator + tags + noise).
        item_bias (torch.Tensor): float32 [N] log-popularity (Zipf over a random item ranking).
        category_term (torch.Tensor): float32 [U, C] per-user category affinity; categories
            below the user's personal threshold hold -1e4 (never engaged with).
        year_term (torch.Tensor): float32 [U, Y] release-year preference by user type; years
            after the user's active period hold -1e4.
        user_language (np.ndarray): int64 [U]. item_language / item_category / item_year /
        item_creator (np.ndarray): int64 [N] (year as an index from ``year_min``).
        loyal_offsets (np.ndarray): int64 [U+1]; ``loyal_creators[loyal_offsets[u]:...]`` are the
            creators user u is loyal to.
        loyal_creators (np.ndarray): int64.
        user_type (np.ndarray): int64 [U], NEUTRAL / NOVELTY / CLASSIC.
        label_user (np.ndarray): float32 [U, 8] and label_item [N, 8]: the factors of the
            like/share/watch labels, independent of the click factors.
        item_quality (np.ndarray): float32 [N] intrinsic quality (drives like/share).
        factor_scale (float), language_bonus (float), loyalty_bonus (float): logit weights.
    """

    user_factor: torch.Tensor
    item_factor: torch.Tensor
    item_bias: torch.Tensor
    category_term: torch.Tensor
    year_term: torch.Tensor
    user_language: np.ndarray
    item_language: np.ndarray
    item_category: np.ndarray
    item_year: np.ndarray
    item_creator: np.ndarray
    loyal_offsets: np.ndarray
    loyal_creators: np.ndarray
    user_type: np.ndarray
    label_user: np.ndarray
    label_item: np.ndarray
    item_quality: np.ndarray
    factor_scale: float
    language_bonus: float
    loyalty_bonus: float

    def extended(self, full: bool = True) -> Tuple[torch.Tensor, torch.Tensor]:
        """User and item vectors whose inner product is the engagement logit (loyalty excluded).

        ``full=False`` keeps only the part a plain two-tower model expresses directly:
        ``factor_scale * <u, v> + item_bias + language_bonus * [same language]``.

        Returns:
            (torch.Tensor, torch.Tensor): float32 [U, E] and [N, E].
        """
        n_lang = int(max(self.user_language.max(), self.item_language.max())) + 1
        lang_u = torch.nn.functional.one_hot(torch.from_numpy(self.user_language), n_lang).float()
        lang_i = torch.nn.functional.one_hot(torch.from_numpy(self.item_language), n_lang).float()
        u = [self.user_factor * self.factor_scale, lang_u * self.language_bonus, torch.ones(lang_u.shape[0], 1)]
        v = [self.item_factor, lang_i, self.item_bias[:, None]]
        if full:
            n_cat, n_year = self.category_term.shape[1], self.year_term.shape[1]
            u += [self.category_term, self.year_term]
            v += [torch.nn.functional.one_hot(torch.from_numpy(self.item_category), n_cat).float(),
                  torch.nn.functional.one_hot(torch.from_numpy(self.item_year), n_year).float()]
        return torch.cat(u, 1).contiguous(), torch.cat(v, 1).contiguous()

    def add_loyalty(self, scores: torch.Tensor, users: np.ndarray, creator_items: Tuple[np.ndarray, np.ndarray],
                    item_pos: Optional[np.ndarray] = None) -> None:
        """Adds ``loyalty_bonus`` in place to the scores of each user's loyal creators' items.

        Args:
            scores (torch.Tensor): float32 [B, N'] scores of ``users`` (row b is ``users[b]``).
            users (np.ndarray): int64 [B] user rows.
            creator_items (Tuple[np.ndarray, np.ndarray]): CSR from :func:`creator_items`.
            item_pos (Optional[np.ndarray]): int64 [N] column of each item in ``scores``
                (``None``: item i is column i); items at columns >= N' are skipped.
        """
        rows, creators = _csr_gather(self.loyal_offsets, self.loyal_creators, np.asarray(users, dtype=np.int64))
        which, cols = _csr_gather(*creator_items, creators)
        rows = rows[which]
        if item_pos is not None:
            cols = item_pos[cols]
        keep = cols < scores.shape[1]
        r, c = torch.from_numpy(rows[keep]), torch.from_numpy(cols[keep])
        scores.index_put_((r, c), torch.tensor(self.loyalty_bonus), accumulate=True)

    def logits(self, users: np.ndarray, full: bool = True) -> torch.Tensor:
        """Noise-free engagement logits of the given users for every item.

        Args:
            users (np.ndarray): int64 [B] user rows (contiguous range not required).
            full (bool): include category thresholds, year preference and creator loyalty; with
                ``False`` only the dot-product part (see :meth:`extended`).

        Returns:
            torch.Tensor: float32 [B, N]; never-engaged pairs are about -1e4.
        """
        users = np.asarray(users, dtype=np.int64)
        ue, ve = self.extended(full)
        scores = ue[torch.from_numpy(users)] @ ve.T
        if full:
            num_creators = int(max(self.item_creator.max(), self.loyal_creators.max(initial=0))) + 1
            self.add_loyalty(scores, users, creator_items(self.item_creator, num_creators))
        return scores


def _csr_gather(offsets: np.ndarray, values: np.ndarray, rows: np.ndarray) -> Tuple[np.ndarray, np.ndarray]:
    """(position in ``rows``, value) of every value of the given CSR rows, row by row."""
    counts = offsets[rows + 1] - offsets[rows]
    pos = np.repeat(offsets[rows] - np.r_[0, np.cumsum(counts)[:-1]], counts) + np.arange(counts.sum())
    return np.repeat(np.arange(rows.size), counts), values[pos]


def creator_items(item_creator: np.ndarray, num_creators: int) -> Tuple[np.ndarray, np.ndarray]:
    """CSR (offsets [K+1], item rows) of each creator's items."""
    order = np.argsort(item_creator, kind="stable")
    offsets = np.zeros(num_creators + 1, dtype=np.int64)
    np.cumsum(np.bincount(item_creator, minlength=num_creators), out=offsets[1:])
    return offsets, order.astype(np.int64)


def recency_preference(user_type: np.ndarray, age: np.ndarray) -> np.ndarray:
    """Logit bonus in [0, 1.5] for an item ``age`` years old at the user's time, by user type.

    Novelty seekers like fresh releases (``1.5 exp(-age / 2)``), classic lovers items older
    than about 12 years (``1.5 sigmoid((age - 12) / 2)``), neutral users do not care.
    """
    age = np.maximum(age, 0.0)
    fresh = 1.5 * np.exp(-age / 2.0)
    classic = 1.5 / (1.0 + np.exp(-(age - 12.0) / 2.0))
    return np.where(user_type == NOVELTY, fresh, np.where(user_type == CLASSIC, classic, 0.0))


@dataclass
class World:
    """Observable attributes (names and ids), activity and latents of a drawn world."""

    countries: Tuple[str, ...]
    languages: Tuple[str, ...]
    categories: Tuple[str, ...]
    tag_names: Tuple[str, ...]
    user_country: np.ndarray  # int64 [U]
    user_age: np.ndarray  # int64 [U]
    item_tags: Tuple[np.ndarray, np.ndarray]  # (values, offsets [N+1])
    n_interactions: np.ndarray  # int64 [U] target number of interactions
    active_start: np.ndarray  # int64 [U] seconds
    active_span: np.ndarray  # int64 [U] seconds
    latents: WorldLatents


def _sample_tags(rng: np.random.Generator, item_cat: np.ndarray, n_tags: int, n_cat: int,
                 cat_p: np.ndarray, categories: Tuple[str, ...]) -> Tuple[Tuple[np.ndarray, np.ndarray], Tuple[str, ...], np.ndarray]:
    """Tags: 80% belong to a home category, the rest are general; items draw mostly from their
    category's pool, popular tags (low pool position) more often. Returns CSR, names, home."""
    home = np.where(rng.random(n_tags) < 0.8, rng.choice(n_cat, n_tags, p=cat_p), -1)
    order = np.argsort(home, kind="stable")  # pool -1 (general) first, then per category
    pool_off = np.zeros(n_cat + 2, dtype=np.int64)  # pool p = home + 1
    np.cumsum(np.bincount(home + 1, minlength=n_cat + 1), out=pool_off[1:])
    pos_in_pool = np.empty(n_tags, dtype=np.int64)
    pos_in_pool[order] = np.arange(n_tags) - pool_off[home[order] + 1]
    names = tuple(f"{categories[h]}-{p}" if h >= 0 else f"tag-{p}" for h, p in zip(home.tolist(), pos_in_pool.tolist()))
    n_items, n_cand = item_cat.size, 8
    pool = np.where(rng.random((n_items, n_cand)) < 0.8, item_cat[:, None] + 1, 0)
    size = pool_off[pool + 1] - pool_off[pool]
    pool = np.where(size > 0, pool, 0)  # empty category pool -> general pool
    size = pool_off[pool + 1] - pool_off[pool]
    if (size == 0).any():  # no general tags either: use any tag
        pool, size = np.where(size == 0, -1, pool), np.where(size == 0, n_tags, size)
    pick = np.minimum((size * rng.random((n_items, n_cand)) ** 2).astype(np.int64), size - 1)
    cand = np.where(pool >= 0, order[pool_off[np.maximum(pool, 0)] + pick], pick)
    fresh = np.ones_like(cand, dtype=bool)
    for j in range(1, n_cand):
        fresh[:, j] = ~(cand[:, j:j + 1] == cand[:, :j]).any(1)
    want = rng.choice(5, n_items, p=_TAGS_PER_ITEM_P) + 1
    keep = fresh & (np.cumsum(fresh, 1) <= want[:, None])
    offsets = np.zeros(n_items + 1, dtype=np.int64)
    np.cumsum(keep.sum(1), out=offsets[1:])
    return (cand[keep].astype(np.int64), offsets), names, home


def draw_world(cfg: "SyntheticConfig") -> World:
    """Draws attributes and latents of a world (see :mod:`silverrec.data.synthetic`)."""
    rng = np.random.default_rng(np.random.SeedSequence([cfg.seed, 1]))
    U, N, C, L, K, D = cfg.num_users, cfg.num_items, cfg.num_categories, cfg.num_languages, cfg.num_creators, cfg.dim
    Y = cfg.year_max - cfg.year_min + 1
    languages = _names(LANGUAGES, L, "lang_")
    countries = _names(tuple(c for c, _ in COUNTRIES), cfg.num_countries, "country_")
    home_lang = np.array([LANGUAGES.index(COUNTRIES[c][1]) if c < len(COUNTRIES) else c for c in range(cfg.num_countries)]) % L
    categories = _names(CATEGORIES, C, "category_")
    # users: country (Zipf), language (mostly the country's), age, taste for new/old releases
    country_p = _zipf(cfg.num_countries, 0.8)
    country = rng.choice(cfg.num_countries, U, p=country_p)
    lang_p = np.bincount(home_lang, weights=country_p, minlength=L) + 1e-3
    lang_p /= lang_p.sum()
    language = np.where(rng.random(U) < 0.15, rng.choice(L, U, p=lang_p), home_lang[country])
    age = rng.choice(len(AGE_BUCKETS), U, p=_AGE_P)
    r = rng.random(U)
    p_nov, p_cls = 0.55 - 0.08 * age, 0.10 + 0.08 * age  # the young prefer new releases
    user_type = np.where(r < p_nov, NOVELTY, np.where(r < p_nov + p_cls, CLASSIC, NEUTRAL))
    # preferred categories (1-3, Dirichlet weights), affinities and personal thresholds
    cat_p = _zipf(C, 0.7)
    top = np.argsort(-(np.log(cat_p) + rng.gumbel(size=(U, C))), axis=1)[:, :3]
    w = rng.dirichlet(np.ones(3), U) * (np.arange(3) < rng.integers(1, 4, U)[:, None])
    w /= w.sum(1, keepdims=True)
    pref = np.zeros((U, C))
    np.put_along_axis(pref, top, w, axis=1)
    affinity = 3.0 * pref + rng.normal(0.0, 0.6, (U, C))
    threshold = np.sort(affinity, 1)[np.arange(U), (rng.uniform(0.3, 0.7, U) * C).astype(np.int64)]
    blocked = (affinity < threshold[:, None]) & (pref == 0)
    # creators: a primary and up to 2 secondary categories, a language, Zipf popularity
    cr_primary = rng.choice(C, K, p=cat_p)
    cr_second = rng.choice(C, (K, 2))
    n_second = rng.integers(0, 3, K)
    cr_lang = rng.choice(L, K, p=lang_p)
    cr_p = _zipf(K, 1.0)[rng.permutation(K)]
    # items: creator, category (mostly the creator's primary), language, release year, tags
    item_creator = rng.choice(K, N, p=cr_p)
    second = cr_second[item_creator, rng.integers(0, 2, N) % np.maximum(n_second[item_creator], 1)]
    use_primary = (rng.random(N) < 0.75) | (n_second[item_creator] == 0)
    item_cat = np.where(use_primary, cr_primary[item_creator], second)
    item_lang = np.where(rng.random(N) < 0.9, cr_lang[item_creator], rng.choice(L, N, p=lang_p))
    item_year = np.clip(Y - 1 - np.floor(rng.exponential(7.0, N)).astype(np.int64), 0, Y - 1)
    tags, tag_names, tag_home = _sample_tags(rng, item_cat, cfg.num_tags, C, cat_p, categories)
    item_bias = -cfg.zipf_exponent * np.log1p(rng.permutation(N)).astype(np.float32)
    # latent factors: items = category + creator + tags + noise, users = preferred categories + noise
    def gauss(*shape: int) -> np.ndarray:
        return rng.normal(0.0, 1.0 / np.sqrt(D), shape)
    cat_emb = gauss(C, D)
    cr_emb = 0.8 * cat_emb[cr_primary] + 0.6 * gauss(K, D)
    tag_emb = np.where(tag_home[:, None] >= 0, 0.8 * cat_emb[np.maximum(tag_home, 0)] + 0.6 * gauss(cfg.num_tags, D),
                       gauss(cfg.num_tags, D))
    tag_sum = np.add.reduceat(tag_emb[tags[0]], tags[1][:-1], axis=0) if tags[0].size else np.zeros((N, D))
    tag_mean = tag_sum / np.maximum(np.diff(tags[1]), 1)[:, None]
    item_factor = cat_emb[item_cat] + 0.6 * cr_emb[item_creator] + 0.5 * tag_mean + 0.3 * gauss(N, D)
    user_factor = pref @ cat_emb + 0.4 * gauss(U, D)
    # activity: number of interactions (log-normal), active period inside [start_time, end_time)
    sigma = 0.8
    n_inter = np.exp(rng.normal(np.log(cfg.interactions_per_user) - sigma ** 2 / 2, sigma, U))
    n_inter = np.clip(np.round(n_inter), cfg.min_interactions, cfg.max_interactions).astype(np.int64)
    span = rng.uniform(30, 400, U) * 86400
    start = cfg.start_time + rng.random(U) * np.maximum(cfg.end_time - cfg.start_time - span, 0)
    user_year = 1970.0 + start / _SECONDS_PER_YEAR - cfg.year_min  # year index, fractional
    item_age = user_year[:, None] - np.arange(Y)[None, :]  # [U, Y]
    year_term = np.where(np.arange(Y)[None, :] <= np.floor(user_year)[:, None],
                         recency_preference(user_type[:, None], item_age), _MASKED)
    category_term = np.where(blocked, _MASKED, 0.5 * affinity)
    # creator loyalty: up to 3 creators whose primary category the user prefers
    n_loyal = np.minimum(rng.poisson(1.0, U), 3)
    by_cat = np.argsort(cr_primary * 2.0 - cr_p / cr_p.max(), kind="stable")  # per category, popular first
    cat_off = np.zeros(C + 1, dtype=np.int64)
    np.cumsum(np.bincount(cr_primary, minlength=C), out=cat_off[1:])
    pairs = []
    cum_w = np.cumsum(w, 1)
    for j in range(3):
        c = top[np.arange(U), np.minimum((rng.random(U)[:, None] > cum_w).sum(1), 2)]
        size = cat_off[c + 1] - cat_off[c]
        pos = np.minimum((size * rng.random(U) ** 2).astype(np.int64), np.maximum(size - 1, 0))
        ok = (j < n_loyal) & (size > 0)
        pairs.append(np.flatnonzero(ok) * K + by_cat[cat_off[c[ok]] + pos[ok]])
    keys = np.unique(np.concatenate(pairs))
    loyal_offsets = np.zeros(U + 1, dtype=np.int64)
    np.cumsum(np.bincount(keys // K, minlength=U), out=loyal_offsets[1:])
    cat_emb2 = rng.normal(0.0, 1.0 / np.sqrt(8), (C, 8))
    label_item = 0.7 * cat_emb2[item_cat] + 0.7 * rng.normal(0.0, 1.0 / np.sqrt(8), (N, 8))
    label_user = 0.8 * pref @ cat_emb2 + 0.8 * rng.normal(0.0, 1.0 / np.sqrt(8), (U, 8))
    f32 = lambda a: torch.from_numpy(np.ascontiguousarray(a, dtype=np.float32))  # noqa: E731
    lat = WorldLatents(
        user_factor=f32(user_factor), item_factor=f32(item_factor), item_bias=f32(item_bias),
        category_term=f32(category_term), year_term=f32(year_term), user_language=language.astype(np.int64),
        item_language=item_lang.astype(np.int64), item_category=item_cat.astype(np.int64),
        item_year=item_year.astype(np.int64), item_creator=item_creator.astype(np.int64),
        loyal_offsets=loyal_offsets, loyal_creators=(keys % K).astype(np.int64), user_type=user_type.astype(np.int64),
        label_user=label_user.astype(np.float32), label_item=label_item.astype(np.float32),
        item_quality=rng.normal(0.0, 1.0, N).astype(np.float32), factor_scale=cfg.factor_scale,
        language_bonus=cfg.language_bonus, loyalty_bonus=cfg.loyalty_bonus)
    return World(countries=countries, languages=languages, categories=categories, tag_names=tag_names,
                 user_country=country.astype(np.int64), user_age=age.astype(np.int64), item_tags=tags,
                 n_interactions=n_inter, active_start=start.astype(np.int64), active_span=span.astype(np.int64),
                 latents=lat)
