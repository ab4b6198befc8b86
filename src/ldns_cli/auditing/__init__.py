"""The audit of a sample set: does it leak its training trials, and is it useful?

`audit_full` / `audit` (`run.py`) ask four questions of samples against the model's training
trials and real held-out trials: memorisation (`memorisation.py`, distances in the feature spaces
of `distances.py`), membership inference from the model itself (`membership.py`), realism as a
classifier two-sample test (`realism.py`) and utility as train-on-synthetic, test-on-real
(`utility.py`); `verdict.py` puts the answers in words, `report.py` draws them, `stats.py` holds
the intervals and the small regressions. The package is not named `audit` because `ldns.audit`
is the API's function, which a subpackage of that name would shadow.
"""
