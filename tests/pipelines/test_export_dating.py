"""The `annotations` asset dates each labeling export record on chain (`dated_export`); a chain it cannot
reach leaves the export undated and says why, rather than failing the sync (the claims check then warns,
and publishing a run of it is refused)."""

from __future__ import annotations

import logging

from pipelines.assets.labeling import dated_export
from pipelines.resources import ChainResource


def test_an_unreachable_chain_leaves_the_export_undated_and_warns(tmp_path, monkeypatch, caplog) -> None:
    monkeypatch.setenv("CARAVAN_PRIVATE_KEY", "0x" + "11" * 32)
    (tmp_path / "deployments-31337.json").write_text('{"SourceClaims": {"address": "0x' + "22" * 20 + '"}}')
    chain = ChainResource(rpc_url="http://127.0.0.1:9", chain_dir=str(tmp_path), auto_deploy=False)
    with caplog.at_level(logging.WARNING):
        said = dated_export(chain, "bafyexport", logging.getLogger("annotations"))
    assert said.startswith("not dated: ") and "127.0.0.1:9" in said
    assert "labeling export record bafyexport not dated on chain" in caplog.text


def test_no_contracts_deployed_from_here_leaves_the_export_undated_quietly(tmp_path, caplog) -> None:
    chain = ChainResource(rpc_url="http://127.0.0.1:9", chain_dir=str(tmp_path), auto_deploy=False)
    with caplog.at_level(logging.WARNING):
        said = dated_export(chain, "bafyexport", logging.getLogger("annotations"))
    assert said == "not dated: no contracts deployed from here, or no operator key" and not caplog.text
