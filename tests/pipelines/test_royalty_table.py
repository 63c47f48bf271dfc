"""The royalty table the demo prints marks a contributor whose data or labels hurt the model."""

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
