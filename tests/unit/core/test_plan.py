"""plan_batch: quotas and counts become the selector's shortfall; invariants of the batch."""

from __future__ import annotations

import dataclasses

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from planner.core.acquisition import entropy, one_vs_rest
from planner.core.plan import Plan, PlanOptions, plan_batch, rarity_weights
from planner.core.quotas import Quota
from planner.core.table import CountTable
from planner.errors import InputError

CLASSES = ("car", "person", "wheelchair")


def table(counts: list[int]) -> CountTable:
    images = np.asarray([counts], np.int64)
    return CountTable(CLASSES, ("train",), images, images.copy(), np.zeros_like(images))


def pool(n: int, seed: int = 0) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    rng = np.random.default_rng(seed)
    probs = rng.dirichlet([3.0, 2.0, 0.3], size=n)
    return np.arange(n) + 1000, probs, rng.standard_normal((n, 8)).astype(np.float32)


def test_shortfall_need_and_weights_come_from_quotas() -> None:
    ids, probs, emb = pool(200)
    quotas = [
        Quota("wheelchair", target=50, per_cycle_min=4, criticality=2.0),
        Quota("car", target=10),
    ]
    plan = plan_batch(
        table([12, 5, 20]),
        quotas,
        ids,
        probs,
        options=PlanOptions(batch_size=20),
        rng=0,
        embeddings=emb,
    )
    # wheelchair lacks 30 (capped at the batch of 20); car is met; person has no quota
    np.testing.assert_array_equal(plan.shortfall, [0.0, 0.0, 20.0])
    np.testing.assert_allclose(plan.need, [0.0, 0.0, 2.0 * 30 / 50])
    np.testing.assert_array_equal(plan.weights, [1.0, 1.0, 2.0])
    np.testing.assert_array_equal(plan.min_slots, [0, 0, 4])
    assert len(plan.batch.picks) == 20
    assert plan.uncertainty.shape == (200,)
    # the quota pull: picks lean to the short class far beyond its pool share
    picked = probs[[pick.row for pick in plan.batch.picks]]
    assert picked[:, 2].mean() > 2 * probs[:, 2].mean()
    assert plan.as_dict()["classes"]["wheelchair"]["shortfall"] == 20.0


def test_classes_name_the_columns_in_any_order() -> None:
    ids, probs, _ = pool(50)
    reordered = probs[:, [2, 0, 1]]
    plan = plan_batch(
        table([0, 0, 0]),
        [Quota("wheelchair", target=3)],
        ids,
        reordered,
        classes=("wheelchair", "car", "person"),
        options=PlanOptions(batch_size=5, diversity=False),
        rng=1,
    )
    np.testing.assert_array_equal(plan.shortfall, [5.0, 0.0, 0.0])  # 2 x 3, at most 5
    assert plan.batch.classes == ("wheelchair", "car", "person")


def test_bald_needs_mc_probs_and_uses_them() -> None:
    ids, probs, _ = pool(30)
    options = PlanOptions(batch_size=4, uncertainty="bald", diversity=False)
    with pytest.raises(InputError, match="mc_probs"):
        plan_batch(table([0, 0, 0]), [], ids, probs, options=options, rng=0)
    rng = np.random.default_rng(3)
    mc = rng.dirichlet([1.0, 1.0, 1.0], size=(5, 30))
    plan = plan_batch(
        table([0, 0, 0]), [], ids, mc.mean(axis=0), options=options, rng=0, mc_probs=mc
    )
    assert plan.uncertainty.max() > 0


def test_stored_bald_scores_are_the_uncertainty_when_given() -> None:
    ids, probs, _ = pool(30)
    options = PlanOptions(
        batch_size=4, diversity=False, exploration_share=0.0, hard_negative_share=0.0
    )
    scores = np.linspace(0.0, 0.9, 30)[::-1].copy()  # the first items most uncertain
    plan = plan_batch(table([0, 0, 0]), [], ids, probs, options=options, rng=0, bald_scores=scores)
    np.testing.assert_array_equal(plan.uncertainty, scores)
    assert sorted(int(p.id) for p in plan.batch.picks) == [1000, 1001, 1002, 1003]
    entropy = plan_batch(table([0, 0, 0]), [], ids, probs, options=options, rng=0)
    assert not np.array_equal(entropy.uncertainty, scores)
    bald_options = PlanOptions(batch_size=4, uncertainty="bald", diversity=False)
    by_bald = plan_batch(
        table([0, 0, 0]), [], ids, probs, options=bald_options, rng=0, bald_scores=scores
    )
    np.testing.assert_array_equal(by_bald.uncertainty, scores)
    with pytest.raises(InputError, match=r"bald_scores must be \(30,\)"):
        plan_batch(table([0, 0, 0]), [], ids, probs, options=options, rng=0, bald_scores=scores[:3])
    with pytest.raises(InputError, match=r"\[0, 1\]"):
        plan_batch(table([0, 0, 0]), [], ids, probs, options=options, rng=0, bald_scores=scores + 1)


def test_multilabel_presence_is_accepted() -> None:
    rng = np.random.default_rng(4)
    presence = rng.random((40, 3))  # rows need not sum to 1
    plan = plan_batch(
        table([5, 5, 0]),
        [Quota("wheelchair", target=2)],
        np.arange(40),
        presence,
        options=PlanOptions(batch_size=6, multilabel=True, diversity=False),
        rng=0,
    )
    assert len(plan.batch.picks) == 6
    assert ((plan.uncertainty >= 0) & (plan.uncertainty <= 1)).all()


def test_discovery_goes_to_isolated_items_when_a_short_class_is_unseen() -> None:
    rng = np.random.default_rng(5)
    dense = rng.normal(0, 0.05, (300, 4)) + np.array([1.0, 0, 0, 0])
    lonely = np.eye(4)[1:] * 3 + rng.normal(0, 0.05, (3, 4))  # three far-apart points
    emb = np.concatenate([dense, lonely]).astype(np.float32)
    probs = np.tile([0.6, 0.4, 0.0], (303, 1))  # the model has never seen a wheelchair
    plan = plan_batch(
        table([10, 10, 0]),
        [Quota("wheelchair", target=3)],
        np.arange(303),
        probs,
        options=PlanOptions(batch_size=6, diversity=False),
        rng=0,
        embeddings=emb,
    )
    assert {300, 301, 302} <= set(plan.batch.ids)
    assert plan.batch.count("exploration") >= 3


def test_discovery_share_drops_once_every_short_class_has_enough_labels() -> None:
    ids, probs, emb = pool(200)
    quotas = [Quota("wheelchair", target=30), Quota("person", target=30)]
    options = PlanOptions(batch_size=20, exploration_share=0.0, hard_negative_share=0.0)

    def exploration(counts: list[int]) -> int:
        plan = plan_batch(table(counts), quotas, ids, probs, options=options, rng=0, embeddings=emb)
        return plan.batch.count("exploration")

    assert exploration([0, 5, 3]) == 14  # both short classes under 8 labelled: 70%
    assert exploration([0, 20, 3]) == 9  # one of the two: 20% + 50% / 2 = 45%
    assert exploration([0, 5, 8]) == 9  # person is short with 5 labelled
    assert exploration([0, 20, 8]) == 4  # every short class has 8: 20%
    assert exploration([0, 30, 7]) == 14  # person met: only wheelchair counts


def test_discovery_whitens_automatically_by_default() -> None:
    options = PlanOptions(batch_size=20)
    assert options.discovery_whiten == "auto"
    assert options.selection().discovery_whiten == "auto"
    ids, probs, emb = pool(200)
    quotas = [Quota("wheelchair", target=30)]
    plan = plan_batch(table([0, 20, 3]), quotas, ids, probs, options=options, rng=0, embeddings=emb)
    assert any(n.startswith("discovery measured novelty") for n in plan.batch.notes)


def test_unknown_short_share_counts_labelled_images_of_short_classes_only() -> None:
    from planner.core.plan import unknown_short_share
    from planner.core.quotas import deficits

    quotas = [Quota("wheelchair", target=10), Quota("bus", target=5), Quota("car", target=1)]
    counts = table([3, 0, 9])  # car met
    status = deficits(quotas, counts)
    # bus is not a column of the model's probabilities: it cannot be selected for
    assert unknown_short_share(status, counts, CLASSES, after=9) == 0.0
    assert unknown_short_share(status, counts, CLASSES, after=10) == 1.0
    assert unknown_short_share(status, counts, (*CLASSES, "bus"), after=1) == 0.5
    met = deficits([Quota("car", target=1)], counts)
    assert unknown_short_share(met, counts, CLASSES, after=100) == 0.0


def test_shortfall_is_the_factor_times_the_deficit_capped_at_the_batch() -> None:
    ids, probs, emb = pool(100)
    quotas = [Quota("wheelchair", target=10), Quota("person", target=30)]
    counts = table([0, 24, 7])  # wheelchair lacks 3, person 6

    def shortfall(**kwargs: float) -> list[float]:
        options = PlanOptions(batch_size=10, **kwargs)  # type: ignore[arg-type]
        plan = plan_batch(counts, quotas, ids, probs, options=options, rng=0, embeddings=emb)
        return plan.shortfall.tolist()

    assert shortfall() == [0.0, 10.0, 6.0]  # 2 x 6 capped at 10, 2 x 3
    assert shortfall(shortfall_factor=1.0) == [0.0, 6.0, 3.0]
    assert shortfall(shortfall_factor=3.0) == [0.0, 10.0, 9.0]


@pytest.mark.parametrize(
    ("kwargs", "match"),
    [
        ({"batch_size": 5, "discovery_known_after": -1}, "discovery_known_after"),
        ({"batch_size": 5, "discovery_known_share": 1.5}, "discovery_known_share"),
        ({"batch_size": 0}, "batch_size"),
        ({"batch_size": 5, "uncertainty": "variance"}, "uncertainty"),
        ({"batch_size": 5, "exploration_share": 1.5}, "exploration_share"),
        ({"batch_size": 5, "discovery_whiten": "yes"}, "discovery_whiten"),
        ({"batch_size": 5, "shortfall_factor": 0.5}, "shortfall_factor"),
        ({"batch_size": 5, "shortfall_factor": float("nan")}, "shortfall_factor"),
        ({"batch_size": 5, "vote_neighbours": -1}, "vote_neighbours"),
        ({"batch_size": 5, "vote_neighbours": True}, "vote_neighbours"),
        ({"batch_size": 5, "discovery_short_weight": -1.0}, "discovery_short_weight"),
        ({"batch_size": 5, "vote_distance_power": -1.0}, "vote_distance_power"),
        ({"batch_size": 5, "met_rarity_power": float("nan")}, "met_rarity_power"),
    ],
)
def test_bad_options_say_what(kwargs: dict[str, object], match: str) -> None:
    with pytest.raises(InputError, match=match):
        PlanOptions(**kwargs)  # type: ignore[arg-type]


def test_column_count_mismatch_names_the_fix() -> None:
    ids, probs, _ = pool(10)
    two = probs[:, :2] / probs[:, :2].sum(axis=1, keepdims=True)
    with pytest.raises(InputError, match="classes="):
        plan_batch(table([0, 0, 0]), [], ids, two, options=PlanOptions(batch_size=2), rng=0)


@settings(max_examples=40, deadline=None)
@given(
    seed=st.integers(0, 10_000),
    n=st.integers(1, 60),
    b=st.integers(1, 15),
    counts=st.lists(st.integers(0, 30), min_size=3, max_size=3),
    diversity=st.booleans(),
)
def test_invariants(seed: int, n: int, b: int, counts: list[int], diversity: bool) -> None:
    ids, probs, emb = pool(n, seed)
    rng = np.random.default_rng(seed)
    exclude = ids[rng.random(n) < 0.3]
    quotas = [Quota("wheelchair", target=20, per_cycle_min=2), Quota("person", target=10)]
    options = PlanOptions(batch_size=b, diversity=diversity)

    def once() -> list[int | str]:
        return plan_batch(
            table(counts),
            quotas,
            ids,
            probs,
            options=options,
            rng=seed,
            embeddings=emb,
            exclude=exclude,
        ).batch.ids

    first = once()
    assert not set(first) & set(exclude.tolist())
    assert len(set(first)) == len(first)
    assert len(first) <= min(b, n - exclude.size)
    assert first == once()


def _clusters(seed: int = 0) -> tuple[np.ndarray, np.ndarray, dict[int, list[str]]]:
    """Five tight clusters in 8-d; the last (rows 160-165) is wheelchairs. Labelled: rows
    160-162 and four rows of every other cluster. The model knows nothing of wheelchairs."""
    rng = np.random.default_rng(seed)
    centres = rng.standard_normal((5, 8)) * 4
    sizes = [40, 40, 40, 40, 6]
    emb = np.concatenate(
        [c + 0.2 * rng.standard_normal((s, 8)) for c, s in zip(centres, sizes, strict=True)]
    )
    probs = np.tile([0.6, 0.38, 0.02], (emb.shape[0], 1))
    labels = {160 + i: ["wheelchair"] for i in range(3)}
    for start, name in zip((0, 40, 80, 120), ("car", "person", "car", "person"), strict=True):
        labels |= {start + j: [name] for j in range(4)}
    return emb.astype(np.float32), probs, labels


def _greedy_only() -> PlanOptions:
    return PlanOptions(
        batch_size=3,
        exploration_share=0.0,
        hard_negative_share=0.0,
        discovery_share=0.0,
        discovery_known_share=0.0,
        diversity=False,
    )


@pytest.mark.parametrize("per_slot", [50, 2])  # all 166 rows vote, or the 10 nearest anchors
def test_labelled_neighbours_lead_the_quota_term_to_a_rare_class_the_model_misses(
    per_slot: int, monkeypatch: pytest.MonkeyPatch
) -> None:
    import planner.core.plan as plan_module

    monkeypatch.setattr(plan_module, "VOTE_MIN_ROWS", 10)
    monkeypatch.setattr(plan_module, "VOTE_ROWS_PER_SLOT", per_slot)
    emb, probs, labels = _clusters()
    ids = np.arange(emb.shape[0])
    counts = table([8, 8, 3])
    quotas = [Quota("wheelchair", target=10)]
    options = _greedy_only()
    plan = plan_batch(
        counts, quotas, ids, probs, options=options, rng=0, embeddings=emb, labels=labels
    )
    # the three open wheelchairs' nearest labelled images are the three labelled ones
    assert sorted(plan.batch.ids) == [163, 164, 165]
    assert all(p.reason == "rare_class" and p.class_name == "wheelchair" for p in plan.batch.picks)
    note = "vote of the 5 nearest of 19 labelled images (weighted by distance ** -3)"
    assert any(note in n for n in plan.batch.notes)
    # without the vote the same labelled rows are only excluded: the model's flat
    # probabilities give no reason to go to cluster 0
    plain = plan_batch(
        counts,
        quotas,
        ids,
        probs,
        options=dataclasses.replace(options, vote_neighbours=0),
        rng=0,
        embeddings=emb,
        labels=labels,
    )
    assert not set(plain.batch.ids) & {163, 164, 165}
    assert not set(plain.batch.ids) & set(labels)
    assert not any("vote" in n for n in plain.batch.notes)


def test_labelled_items_are_never_picked_and_unknown_names_vote_for_nothing() -> None:
    emb, probs, labels = _clusters(1)
    ids = np.arange(emb.shape[0]) + 500
    # the wheelchairs were labelled with a name the model has no column for
    relabelled = {i + 500: (["bus"] if i >= 160 else names) for i, names in labels.items()}
    plan = plan_batch(
        table([8, 8, 0]),
        [Quota("wheelchair", target=10)],
        ids,
        probs,
        options=_greedy_only(),
        rng=0,
        embeddings=emb,
        labels=relabelled | {99_999: ["car"]},  # an id outside the pool is left out
    )
    assert not set(plan.batch.ids) & set(relabelled)
    assert not set(plan.batch.ids) & {663, 664, 665}
    # no labelled image holds the short class: there is nothing to vote for
    assert not any("vote" in n for n in plan.batch.notes)


def test_no_vote_on_embeddings_that_are_mostly_noise() -> None:
    rng = np.random.default_rng(2)
    emb = rng.standard_normal((300, 32)).astype(np.float32)
    probs = np.tile([0.6, 0.38, 0.02], (300, 1))
    labels = {i: ["wheelchair"] for i in range(5)}
    plan = plan_batch(
        table([0, 0, 5]),
        [Quota("wheelchair", target=10)],
        np.arange(300),
        probs,
        options=_greedy_only(),
        rng=0,
        embeddings=emb,
        labels=labels,
    )
    assert "no neighbour vote: the embeddings' spectrum is mostly noise" in plan.batch.notes
    assert not set(plan.batch.ids) & set(labels)


@pytest.mark.parametrize(
    ("labels", "match"),
    [([(1, ["car"])], "labels must map"), ({1: "car"}, "list of class names")],
)
def test_bad_labels_say_what(labels: object, match: str) -> None:
    ids, probs, emb = pool(20)
    with pytest.raises(InputError, match=match):
        plan_batch(
            table([0, 0, 0]),
            [],
            ids,
            probs,
            options=PlanOptions(batch_size=2),
            rng=0,
            embeddings=emb,
            labels=labels,  # type: ignore[arg-type]
        )


# an even split between two classes, a flat row, a confident row: entropy ranks the flat
# row first, the most uncertain one-vs-rest decision the even split
EVEN_FLAT_SURE = np.array([[0.5, 0.5, 0.0], [0.34, 0.33, 0.33], [0.9, 0.05, 0.05]])


def _wheelchair_plan(counts: list[int], target: int, probs: np.ndarray, **changes: object) -> Plan:
    options = dataclasses.replace(_greedy_only(), batch_size=1, **changes)  # type: ignore[arg-type]
    quotas = [Quota("wheelchair", target=target)]
    return plan_batch(table(counts), quotas, np.arange(len(probs)), probs, options=options, rng=0)


def test_once_every_quota_is_met_the_batch_takes_the_most_uncertain_class_decision() -> None:
    met = _wheelchair_plan([9, 9, 3], 3, EVEN_FLAT_SURE)
    np.testing.assert_allclose(met.uncertainty, one_vs_rest(EVEN_FLAT_SURE))
    assert met.batch.ids == [0]
    assert any("every quota is met" in n for n in met.batch.notes)
    kept = _wheelchair_plan([9, 9, 3], 3, EVEN_FLAT_SURE, met_uncertainty=False)
    np.testing.assert_allclose(kept.uncertainty, entropy(EVEN_FLAT_SURE))
    assert kept.batch.ids == [1]
    assert not any("every quota is met" in n for n in kept.batch.notes)


def test_while_a_quota_is_short_the_uncertainty_is_the_configured_one() -> None:
    short = _wheelchair_plan([9, 9, 2], 3, EVEN_FLAT_SURE)
    np.testing.assert_allclose(short.uncertainty, entropy(EVEN_FLAT_SURE))
    assert not any("every quota is met" in n for n in short.batch.notes)


def test_a_short_class_the_model_has_no_column_for_is_named_not_taken_for_met() -> None:
    # the model scores the first two classes only; the third is short of its quota
    probs = EVEN_FLAT_SURE[:, :2] / EVEN_FLAT_SURE[:, :2].sum(axis=1, keepdims=True)
    options = dataclasses.replace(_greedy_only(), batch_size=1)
    quotas = [Quota(CLASSES[0], target=5), Quota(CLASSES[2], target=20)]
    plan = plan_batch(
        table([9, 9, 3]), quotas, np.arange(3), probs, options=options, rng=0, classes=CLASSES[:2]
    )
    np.testing.assert_allclose(plan.uncertainty, entropy(probs))
    assert not any("every quota is met" in n for n in plan.batch.notes)
    (note,) = [n for n in plan.batch.notes if "not scored by the model" in n]
    assert CLASSES[2] in note


def test_with_presence_the_met_decision_weighs_classes_with_few_labelled_images_more() -> None:
    # an even chance of a car, an even chance of a wheelchair; cars have 10x the labels
    presence = np.array([[0.5, 0.0, 0.0], [0.0, 0.0, 0.5]])
    counts, quotas = table([50, 20, 5]), [Quota("wheelchair", target=5)]
    options = PlanOptions(
        batch_size=1,
        multilabel=True,
        exploration_share=0.0,
        hard_negative_share=0.0,
        diversity=False,
    )
    plan = plan_batch(counts, quotas, np.arange(2), presence, options=options, rng=0)
    np.testing.assert_allclose(plan.uncertainty, [0.1, 1.0])
    assert plan.batch.ids == [1]
    assert any("fewer labelled images weighing more" in n for n in plan.batch.notes)
    flat = dataclasses.replace(options, met_rarity_power=0.0)
    even = plan_batch(counts, quotas, np.arange(2), presence, options=flat, rng=0)
    np.testing.assert_allclose(even.uncertainty, [1.0, 1.0])


def test_class_distributions_are_not_weighted_by_rarity() -> None:
    plan = _wheelchair_plan([50, 20, 5], 5, np.array([[0.5, 0.5, 0.0], [0.0, 0.5, 0.5]]))
    np.testing.assert_allclose(plan.uncertainty, [1.0, 1.0])


def test_rarity_weights_hand_values() -> None:
    counts = table([40, 10, 0])
    np.testing.assert_allclose(rarity_weights(counts, CLASSES, power=1.0), [1.0, 4.0, 40.0])
    np.testing.assert_allclose(rarity_weights(counts, CLASSES, power=0.5), [1.0, 2.0, 40**0.5])
    # a column the table does not hold counts as no labelled image
    np.testing.assert_allclose(rarity_weights(counts, ("car", "bus"), power=1.0), [1.0, 40.0])
