"""A synthetic customer table for `caravan demo --data --kind table`: seeded, so the same arguments
write the same rows (and the same bytes, hence the same CIDs).

Whether a customer churns hangs on their plan (a category) and tenure (a number, a tenth of it never
recorded); each row also carries a customer id and a name, which labelers need not see (`--show`) and
the model does not read. One provider (`crm-noisy`) exports most of its rows with the plan and tenure
of some other customer: the table counterpart of the digits' noisy scanner. The true answer is in the
`label` column (the demo's --truth-col).

    .venv/bin/python scripts/make_table.py customers.csv --rows 1500
    caravan demo --data customers.csv --kind table --field row --choices churn,stay --truth-col label \\
        --show plan,region,tenure_months,monthly_fee
"""

from __future__ import annotations

import numpy as np
import pyarrow as pa

PLANS = ("basic", "family", "pro")
REGIONS = ("east", "west")
PROVIDERS = ("bank-north", "bank-south", "telco", "crm-noisy")
NOISY = {"crm-noisy": 0.6}  # share of the noisy provider's rows whose plan and tenure are another's
SHOWN = ("plan", "region", "tenure_months", "monthly_fee")  # what labelers need to answer
FIRST = ("Ada", "Bo", "Chen", "Dana", "Emil", "Fatou", "Goran", "Hana", "Ivo", "Jun")
LAST = ("Berg", "Costa", "Diallo", "Eriksen", "Fischer", "Garcia", "Haddad", "Ito", "Jansen", "Kowalski")
LABEL = "label"


def churns(plan: np.ndarray, tenure: np.ndarray) -> np.ndarray:
    """New customers on the basic plan leave, and the very newest on the pro plan."""
    return (plan == "basic") & (tenure < 24) | (plan == "pro") & (tenure < 6)


def make_table(rows: int = 1500, seed: int = 0, providers: tuple[str, ...] = PROVIDERS) -> pa.Table:
    """`rows` customers, dealt to `providers` in turn, with the true `label` (churn or stay)."""
    rng = np.random.default_rng(seed)
    plan = rng.choice(PLANS, rows)
    tenure = rng.gamma(2.0, 12.0, rows).round(1)
    label = np.where(churns(plan, tenure), "churn", "stay")
    provider = np.array([providers[i % len(providers)] for i in range(rows)])
    for name, share in NOISY.items():  # rows exported with another customer's plan and tenure
        garbled = (provider == name) & (rng.random(rows) < share)
        plan[garbled] = rng.choice(PLANS, int(garbled.sum()))
        tenure[garbled] = rng.gamma(2.0, 12.0, int(garbled.sum())).round(1)
    recorded = np.where(rng.random(rows) < 0.1, np.nan, tenure)  # a tenth never recorded
    return pa.table({
        "provider": provider.tolist(),
        "customer": [f"c-{seed}-{i:05d}" for i in range(rows)],
        "name": [f"{rng.choice(FIRST)} {rng.choice(LAST)}" for _ in range(rows)],
        "plan": plan.tolist(),
        "region": [None if rng.random() < 0.05 else str(rng.choice(REGIONS)) for _ in range(rows)],
        "tenure_months": recorded.tolist(),
        "monthly_fee": rng.normal(30, 8, rows).round(2).tolist(),
        LABEL: label.tolist(),
    })


if __name__ == "__main__":
    from make_texts import main  # scripts/, this file's folder, leads sys.path

    main(make_table, rows=1500, doc=__doc__)
