"""What a run says of its contributors: the demo's royalty table marks one whose data or labels hurt the
model, and the run's warning gives each value within its noise."""

from rich.console import Console

from pipelines.cli.demo import royalty_table


def test_a_contributor_that_hurt_the_model_is_marked_unpaid() -> None:
    rows = [
        {
            "contributor": "clean",
            "role": "provider",
            "address": "0x" + "1" * 40,
            "score": 3.0,
            "weight_bps": 10_000,
        },
        {
            "contributor": "noisy",
            "role": "provider",
            "address": "0x" + "2" * 40,
            "score": -1.5,
            "weight_bps": 0,
        },
        {"contributor": "idle", "role": "labeler", "address": "0x" + "3" * 40, "score": 0.0, "weight_bps": 0},
    ]
    console = Console(width=200, record=True)
    console.print(royalty_table(rows))
    lines = {line.split()[1]: line for line in console.export_text().splitlines() if line.startswith("│")}
    assert "hurt the model: unpaid" in lines["noisy"]
    assert "hurt" not in lines["clean"] and "hurt" not in lines["idle"]  # did nothing is not harm


def test_the_runs_warning_gives_each_unclear_value_with_its_error() -> None:
    """A contributor whose left-out value is within its noise is named with the value and its standard
    error, so the data engineer sees whether the retrains found nothing or too little to tell."""
    import pyarrow as pa

    from attribution import LEFT_OUT_SCHEMA, values_within_noise
    from pipelines.assets.royalties import within_noise_warning

    table = pa.table({"contributor": ["clear", "scanner"], "role": ["provider"] * 2,
                      "examples_left_out": [10, 10], "loss_without": [1.0, 1.0], "loss_with": [1.0, 1.0],
                      "value": [0.05, -0.00028], "value_se": [0.004, 0.0062], "copies_value": [0.0, 0.0],
                      "value_runs": [[0.05], [-0.00028]]}, schema=LEFT_OUT_SCHEMA)
    said = within_noise_warning(table, values_within_noise(table))
    assert said.startswith("the left-out values of scanner (-0.00028 +- 0.0062) are within 2 standard errors")
    assert "clear" not in said and "TrainingConfig.left_out_runs" in said
