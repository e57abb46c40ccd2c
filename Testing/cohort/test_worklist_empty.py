"""Empty predictions rank first in a cohort worklist, with and without the card's usual ranges."""

from SegUncertaintyLib.cohort.worklist import rank_rows


def _result(case, status="done", empty=False, **scores):
    return {"case": case, "status": status, "error": "boom" if status == "failed" else "", "seconds": 1.0,
            "scores": None if status == "failed" else {"brain": {"volume_ml": 0.0 if empty else 1.0,
                                                                  "empty_prediction": empty, **scores}}}


def test_empty_prediction_ranks_first_against_usual_ranges():
    reference = {"classes": {"brain": {"cv": {"review_above": 0.02}, "dpw": {"review_below": 0.9}}}}
    results = [_result("a", cv=0.5, dpw=0.2, segment_entropy=0.6),  # far outside every range
               _result("m", empty=True, cv=None, dpw=1.0),          # all samples empty: reads certain
               _result("b", cv=0.01, dpw=0.99, segment_entropy=0.1),
               _result("z", empty=True, cv=None, dpw=1.0),
               _result("f", status="failed")]
    rows = rank_rows(results, reference)
    assert [r["case"] for r in rows] == ["m", "z", "a", "b", "f"]
    assert rows[0]["reason"].startswith("no segmentation of brain: review")
    assert not rows[2]["reason"].startswith("no segmentation")


def test_empty_prediction_ranks_first_within_the_cohort():
    results = [_result("p", cv=0.1, dpw=0.9, segment_entropy=0.1), _result("q", cv=0.3, dpw=0.8, segment_entropy=0.3),
               _result("e", empty=True, cv=None, dpw=1.0)]
    assert [r["case"] for r in rank_rows(results, None)] == ["e", "q", "p"]
