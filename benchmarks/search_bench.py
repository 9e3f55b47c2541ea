"""`pocketrec bench-search`: how well and how fast personalised search finds the held-out item.

Same temporal leave-last-out split as every benchmark. For each user, a query is made
from the held-out item's metadata, in three kinds:

- ``genre``: one of its genres ("Sci-Fi"): many items match, taste must pick;
- ``title``: one or two words of its title, stop words, numbers and short words skipped;
- ``typo``: one title word of four letters or more with one character edit (a letter
  changed, dropped, added, or two swapped);
- ``logged``: where the log has a query column (a real search log, `Split.queries`), the
  query the user really typed before the held-out event; this kind joins the tuning mean
  when validation has logged queries too.

Rankings of the lexical matches (the user's seen items excluded, as `recommend` does) are
scored by where the held-out item lands, NDCG@10 and HR@10 (a miss if it is not matched at
all): BM25 alone (``alpha = 0``), BM25 + popularity (train counts in place of the dense
score), BM25 + the user vector (step 1's hybrid), and, when the bundle ships a search tower
(`pocketrec train-search`): BM25 + the tower's search vector for a user without history
(the cold-start vector, else zeros: the query encoder alone) and BM25 + the search tower
with the user vector (the personalised hybrid `Recommender.search` serves). Each method's
``alpha`` and BM25 ``b`` are tuned on the validation split (query from the validation item,
mean NDCG@10 over the kinds), then reported on test. Latency: `Recommender.search` and
`Recommender.recommend` p50, interleaved call by call (each first every other time) on the
same bundle and histories.
"""

from __future__ import annotations

import itertools
import json
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

import numpy as np

from pocketrec.data import load
from pocketrec.errors import PocketrecError
from pocketrec.evaluation import QUERY_KINDS, Split, content_words, leave_last_out, typo
from pocketrec.sdk import Bundle, Recommender
from pocketrec.sdk._text import words
from pocketrec.sdk.contract import COLD_START_VECTOR
from pocketrec.sdk.search import Searcher, SearchSettings, SearchTower, mix

KINDS = QUERY_KINDS
# The kind of the queries a real search log holds (`Split.queries`).
LOGGED = "logged"
USER = "bm25+user vector"
ENCODER = "bm25+query encoder (no user)"
TOWER = "bm25+search tower (personalised)"
METHODS = ("bm25", "bm25+popularity", USER, ENCODER, TOWER)
ALPHAS = (0.0, 0.05, 0.1, 0.2, 0.3, 0.5, 0.75, 1.0, 1.5, 2.0, 3.0, 5.0, 10.0)
STAGES = ("valid", "test")
# BM25 length normalisations tried beside each alpha.
BS = (0.0, 0.3, 0.75)


@dataclass(frozen=True)
class SearchBenchConfig:
    """What `run_search_benchmark` measures.

    Attributes:
        bundle: a bundle trained on ``data`` (its item ids are the split's).
        data: the interaction log (a MovieLens folder or a delimited file).
        load_options: `pocketrec.data.load` options for a delimited file (columns, and
            ``query_col`` for a search log's queries).
        seed: picks the query words and edits.
        latency_calls: search and recommend calls each for the latency figures.
    """

    bundle: Path
    data: str
    load_options: Mapping[str, Any] = field(default_factory=dict)
    seed: int = 0
    latency_calls: int = 600


@dataclass(frozen=True)
class _Query:
    user: int
    target: int
    kind: str
    text: str


def make_queries(
    items: Sequence[dict[str, Any]], split: Split, stage: str, seed: int
) -> list[_Query]:
    """The ``stage`` queries of every user whose target is known, per kind (where the
    target has the genre or title words a kind needs, or the log a query for it)."""
    rng = np.random.default_rng(seed)
    logged = split.queries.targets(stage) if split.queries is not None else None
    queries = []
    for user, target in enumerate(split.targets(stage).tolist()):
        if target < 0:
            continue
        if logged is not None and logged[user] is not None and words(logged[user]):
            queries.append(_Query(user, target, LOGGED, logged[user]))
        item = items[target]
        genres = [g for g in item.get("genres", []) if isinstance(g, str) and words(g)]
        title = item.get("title") if isinstance(item.get("title"), str) else ""
        title_words = content_words(title)
        if genres:
            queries.append(_Query(user, target, "genre", str(rng.choice(genres))))
        if title_words:
            count = min(len(title_words), int(rng.integers(1, 3)))
            start = int(rng.integers(0, len(title_words) - count + 1))
            queries.append(
                _Query(user, target, "title", " ".join(title_words[start : start + count]))
            )
        long_words = [w for w in title_words if len(w) >= 4]
        if long_words:
            word = str(rng.choice(long_words))
            queries.append(_Query(user, target, "typo", typo(word, rng)))
    return queries


def target_rank(
    rows: np.ndarray,
    lexical: np.ndarray,
    target: int,
    dense: Callable[[np.ndarray], np.ndarray],
    settings: SearchSettings,
    alpha: float,
) -> float:
    """0-based rank of ``target`` among lexical matches ``rows`` (ascending) once mixed as
    `Recommender.search` mixes them (inf where it would not be returned)."""
    mixed = mix(rows, lexical, dense, settings, alpha)
    at = int(np.searchsorted(rows, target))
    if at >= len(rows) or rows[at] != target or not np.isfinite(mixed[at]):
        return float("inf")
    mine = mixed[at]
    return float(np.sum(mixed > mine) + np.sum((mixed == mine) & (rows < target)))


def _metrics(ranks: Sequence[float]) -> dict[str, float]:
    r = np.asarray(ranks, dtype=np.float64)
    hit = r < 10
    ndcg = np.where(hit, 1.0 / np.log2(np.where(hit, r, 0) + 2.0), 0.0)
    return {"ndcg@10": float(ndcg.mean()), "hr@10": float(hit.mean()), "queries": len(r)}


def run_search_benchmark(config: SearchBenchConfig) -> dict[str, Any]:
    """Tunes ``alpha`` on validation, reports test quality and latency; the figures."""
    split = leave_last_out(load(config.data, **config.load_options))
    bundle = Bundle.open(config.bundle)
    if list(bundle.item_ids) != split.item_ids.tolist():
        raise PocketrecError(
            f"{config.bundle} holds {len(bundle.item_ids)} items that are not the split's "
            f"{split.num_items} in order; pass the data the bundle was trained on"
        )
    items = bundle.items
    base = bundle.search_settings
    index = Searcher.of(items, base, bundle.text_index).index
    searchers = {b: Searcher(index, replace(base, b=b), items) for b in BS}
    popularity = split.item_popularity().astype(np.float32)
    table = bundle.table
    tower_settings = bundle.search_tower_settings
    tower = None
    if tower_settings is not None and bundle.search_tower is not None:
        tower = SearchTower(bundle.search_tower, tower_settings.encoding, bundle.embedding_dim)
    methods = METHODS if tower is not None else METHODS[:3]
    served = TOWER if tower is not None else USER
    cold = np.asarray(
        bundle.manifest["extra"].get(COLD_START_VECTOR, np.zeros(bundle.embedding_dim)),
        np.float32,
    )
    queries = {stage: make_queries(items, split, stage, config.seed) for stage in STAGES}
    # Reported: the kinds test has queries of; tuning averages those validation has.
    kinds, tuning = _kinds(queries["test"]), _kinds(queries["valid"])
    if not kinds or not tuning:
        raise PocketrecError(
            f"{config.data} gives no search queries: its items have no titles or genres and "
            "its log no query column; pass a MovieLens folder, or a log with query_col "
            "(--query-col) whose items the bundle ships with titles"
        )
    results: dict[str, Any] = {
        "bundle": str(config.bundle),
        "settings": base.to_dict(),
        "methods": list(methods),
        "served": served,
        "kinds": kinds,
        "tuning_kinds": tuning,
    }
    ranks: dict[str, dict[str, dict[str, dict[tuple[float, float], list[float]]]]] = {}
    with Recommender.open(bundle) as recommender:
        for stage in STAGES:
            histories = split.histories(stage)
            vectors = recommender.user_vectors([h.tolist() for h in histories])
            texts = [q.text for q in queries[stage]]
            dense_vectors = {USER: vectors[[q.user for q in queries[stage]]]}
            if tower is not None:
                dense_vectors[TOWER] = tower.vectors(texts, dense_vectors[USER])
                dense_vectors[ENCODER] = tower.vectors(texts, np.tile(cold, (len(texts), 1)))
            ranks[stage] = {m: {k: {} for k in (*KINDS, LOGGED)} for m in methods}
            for (n, query), b in itertools.product(enumerate(queries[stage]), BS):
                searcher = searchers[b]
                rows, lexical = searcher.lexical(words(query.text))
                unseen = ~np.isin(rows, histories[query.user])
                rows, lexical = rows[unseen], lexical[unseen]
                popular = lambda rows: popularity[rows]  # noqa: E731
                scorings = [("bm25", popular, (0.0,)), ("bm25+popularity", popular, ALPHAS)]
                for method, by_query in dense_vectors.items():
                    personal = lambda rows, v=by_query[n]: table.vectors(rows) @ v  # noqa: E731
                    scorings.append((method, personal, ALPHAS))
                for method, dense, alphas in scorings:
                    for alpha in alphas:
                        rank = target_rank(
                            rows, lexical, query.target, dense, searcher.settings, alpha
                        )
                        ranks[stage][method][query.kind].setdefault((b, alpha), []).append(rank)
        tuned = {m: _best(ranks["valid"][m], tuning) for m in methods}
        results["tuned"] = {m: {"b": b, "alpha": a} for m, (b, a) in tuned.items()}
        results["valid"] = {
            m: {k: _metrics(ranks["valid"][m][k][tuned[m]]) for k in tuning} for m in methods
        }
        results["test"] = {
            m: {k: _metrics(ranks["test"][m][k][tuned[m]]) for k in kinds} for m in methods
        }
        results["valid_mean_ndcg"] = {
            f"b={b} alpha={a}": _mean_ndcg(ranks["valid"][served], (b, a), tuning)
            for b, a in itertools.product(BS, ALPHAS)
        }
    b, alpha = tuned[served]
    settings = replace(base, b=b, alpha=alpha)
    results["tuned_settings"] = settings.to_dict()
    tuned_bundle = bundle.with_search(settings)
    results["latency"] = _latency(tuned_bundle, split, config)
    results["examples"] = _examples(tuned_bundle, split)
    results["targets"] = _targets(results)
    return results


def _kinds(queries: Sequence[_Query]) -> list[str]:
    present = {q.kind for q in queries}
    return [k for k in (*KINDS, LOGGED) if k in present]


def _mean_ndcg(
    by_kind: dict[str, dict[tuple[float, float], list[float]]],
    knobs: tuple[float, float],
    kinds: Sequence[str],
) -> float:
    return float(np.mean([_metrics(by_kind[k][knobs])["ndcg@10"] for k in kinds]))


def _best(
    by_kind: dict[str, dict[tuple[float, float], list[float]]], kinds: Sequence[str]
) -> tuple[float, float]:
    """The ``(b, alpha)`` of the best mean validation NDCG@10 over ``kinds`` (ties: the
    smaller ones)."""
    knobs = sorted(by_kind[kinds[0]])
    return max(knobs, key=lambda ba: (_mean_ndcg(by_kind, ba, kinds), -ba[1], -ba[0]))


def _latency(bundle: Bundle, split: Split, config: SearchBenchConfig) -> dict[str, float]:
    """p50 and p99 (ms) of search and recommend, one call of each in turn per history."""
    queries = make_queries(bundle.items, split, "test", config.seed)
    histories = split.histories("test")
    ids = split.item_ids
    timings: dict[str, list[float]] = {"search": [], "recommend": []}
    with Recommender.open(bundle) as recommender:
        recommender.search("warm up", history=[])  # the index is read once, before timing
        for n in range(config.latency_calls + 50):
            query = queries[n % len(queries)]
            history = ids[histories[query.user]].tolist()
            calls = {
                "search": lambda q=query.text, h=history: recommender.search(q, history=h),
                "recommend": lambda h=history: recommender.recommend(h),
            }
            # Each goes first every other time: the second call finds the caches warm.
            for name in sorted(calls, reverse=n % 2 == 1):
                started = time.perf_counter()
                calls[name]()
                if n >= 50:
                    timings[name].append(time.perf_counter() - started)
    figures = {}
    for name, seconds in timings.items():
        figures[f"{name}_p50_ms"] = float(np.percentile(seconds, 50) * 1e3)
        figures[f"{name}_p99_ms"] = float(np.percentile(seconds, 99) * 1e3)
    figures["search_over_recommend_p50"] = figures["search_p50_ms"] / figures["recommend_p50_ms"]
    return figures


def _examples(bundle: Bundle, split: Split) -> dict[str, Any]:
    """Top-3 of a few queries for nobody and for two users of far-apart taste."""
    histories = split.histories("test")
    genres = split.item_genres
    candidates = [u for u in range(min(300, split.num_users)) if len(histories[u]) >= 20]
    if len(candidates) < 2 or not genres.shape[1]:
        return {}
    profile = np.stack([genres[histories[u]].mean(axis=0) for u in candidates])
    profile /= np.maximum(np.linalg.norm(profile, axis=1, keepdims=True), 1e-12)
    similarity = profile @ profile.T
    first, second = np.unravel_index(np.argmin(similarity), similarity.shape)
    users = [candidates[first], candidates[second]]
    names = split.genre_names
    out: dict[str, Any] = {"users": {}, "queries": {}}
    for u in users:
        top = np.argsort(-genres[histories[u]].sum(axis=0))[:3]
        out["users"][str(split.users[u])] = {
            "history": len(histories[u]),
            "top_genres": [names[g] for g in top],
            "recent": [split.titles[i] for i in histories[u][-3:].tolist()],
        }
    with Recommender.open(bundle) as recommender:
        for query in ("love", "war", "star", "comedy", "nigth"):
            rows = {"(no history)": recommender.search(query, k=3).items}
            for u in users:
                history = split.item_ids[histories[u]].tolist()
                rows[str(split.users[u])] = recommender.search(query, history=history, k=3).items
            out["queries"][query] = {
                who: [r.title or r.item_id for r in result] for who, result in rows.items()
            }
    return out


def _targets(results: dict[str, Any]) -> dict[str, bool]:
    ndcg = {m: {k: v["ndcg@10"] for k, v in by.items()} for m, by in results["test"].items()}
    served = results["served"]
    targets = {}
    if "genre" in results["kinds"]:
        targets[f"genre: {served} >= 2x bm25+popularity (ndcg@10)"] = (
            ndcg[served]["genre"] >= 2 * ndcg["bm25+popularity"]["genre"]
        )
    if "title" in results["kinds"]:
        targets[f"title: {served} >= bm25 (ndcg@10)"] = (
            ndcg[served]["title"] >= ndcg["bm25"]["title"]
        )
    if ENCODER in ndcg and "genre" in results["kinds"]:
        targets[f"genre: {served} >= 1.2x {ENCODER} (ndcg@10)"] = (
            ndcg[served]["genre"] >= 1.2 * ndcg[ENCODER]["genre"]
        )
    ratio = results["latency"]["search_over_recommend_p50"]
    targets["search p50 <= 1.2x recommend p50"] = ratio <= 1.2
    return targets


def results_markdown(results: dict[str, Any]) -> str:
    """The figures as Markdown tables."""
    lines = [
        f"bundle: {results['bundle']}",
        "",
        "| query kind | method | b | alpha | test NDCG@10 | test HR@10 | queries |",
        "|---|---|---|---|---|---|---|",
    ]
    for kind in results["kinds"]:
        for method in results["methods"]:
            m, knobs = results["test"][method][kind], results["tuned"][method]
            lines.append(
                f"| {kind} | {method} | {knobs['b']:g} | {knobs['alpha']:g} | "
                f"{m['ndcg@10']:.4f} | {m['hr@10']:.4f} | {m['queries']} |"
            )
    latency = results["latency"]
    lines += [
        "",
        f"latency: search p50 {latency['search_p50_ms']:.3f} ms (p99 "
        f"{latency['search_p99_ms']:.3f}), recommend p50 {latency['recommend_p50_ms']:.3f} ms "
        f"(p99 {latency['recommend_p99_ms']:.3f}); ratio "
        f"{latency['search_over_recommend_p50']:.2f}",
        "",
    ]
    lines += [f"- [{'x' if ok else ' '}] {name}" for name, ok in results["targets"].items()]
    return "\n".join(lines)


def main(config: SearchBenchConfig, out: Path | None, save: bool) -> int:
    """Runs the benchmark, prints Markdown, writes ``search.json`` into ``out``; with
    ``save``, writes the tuned settings and the text index into the bundle."""
    results = run_search_benchmark(config)
    print(results_markdown(results))
    if out is not None:
        out.mkdir(parents=True, exist_ok=True)
        (out / "search.json").write_text(json.dumps(results, indent=2) + "\n", encoding="utf-8")
    if save:
        settings = SearchSettings.from_dict(results["tuned_settings"])
        Bundle.open(config.bundle).with_search(settings, text_index=True).save(config.bundle)
        print(
            f"saved b {settings.b:g}, alpha {settings.alpha:g} (tuned for {results['served']}) "
            f"and {config.bundle}/text_index.bin"
        )
    return 0
