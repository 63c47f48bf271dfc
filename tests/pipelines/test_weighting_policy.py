"""The royalty stage's policy as applied and recorded: labeler pay reads answers under the consensus's
own smoothing unless told otherwise, and a run without left-out values pays providers by scores and
labelers by what their answers moved."""

import pytest

from attribution import WeightPolicy
from labeling import DS_SMOOTHING
from pipelines.assets.royalties import WeightingConfig, applied_policy

BOTH = ("provider", "labeler")  # the roles a run's left-out table has rows of


@pytest.mark.parametrize(("recorded", "applied"), [(2.5, 2.5), (0.25, 0.25), (None, DS_SMOOTHING),
                                                    (0.0, DS_SMOOTHING)])
def test_an_unset_label_smoothing_is_the_consensus_records(recorded, applied):
    """2.5: the consensus fitted with 2.5 pseudo-counts is the model pay reads answers under; None (a
    majority vote, an older record) and 0 (crowd-kit's own fit) leave the positive default pay needs."""
    policy = applied_policy(WeightingConfig(), BOTH, recorded)
    assert policy.label_smoothing == applied
    assert WeightPolicy(**policy.model_dump()).label_smoothing == applied  # what the record keeps


def test_a_set_label_smoothing_and_the_left_out_fallback():
    policy = applied_policy(WeightingConfig(label_smoothing=0.5, labelers="left_out"), BOTH, 2.5)
    assert policy.label_smoothing == 0.5 and policy.providers == "left_out" and policy.labelers == "left_out"
    bare = applied_policy(WeightingConfig(labelers="left_out"), (), None)  # no left-out values
    assert (bare.providers, bare.labelers) == ("scores", "valued")
    # labelers not retrained (more than left_out_max, or left_out_labelers off)
    providers_only = applied_policy(WeightingConfig(labelers="left_out"), ("provider",), None)
    assert (providers_only.providers, providers_only.labelers) == ("left_out", "valued")
    assert WeightingConfig().labelers == "valued"
    assert applied_policy(WeightingConfig(providers="scores"), (), None).providers == "scores"
    assert applied_policy(WeightingConfig(labelers="agree"), (), None).labelers == "agree"
    assert WeightingConfig().label_smoothing is None  # the config itself is untouched
