"""Dagster resources: one `ConfigurableResource` per external system, built per deployment.

`local` (the default) is the embedded blockstore, a local Label Studio and a local anvil;
`prod` is a Kubo node (or a pinning service), remote Label Studio and a remote RPC endpoint.
The assets never change between them; only `resources_for(deployment)` does.
"""

from __future__ import annotations

import datetime as dt
import json
import os
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import dagster as dg
import pyarrow as pa

from pipelines.content_io import AssetIndex, ContentStoreIOManager, StoreResource, table_bytes
from pipelines.datasets import (
    Payload,
    SourceFile,
    hub_file_name,
    hub_table,
    load_files,
    load_source,
    registration_times,
    source_files,
    validation_examples,
)
from pipelines.lineage import LineageResource
from pipelines.privacy import holder_keyfile, keyring_dir
from pipelines.settings import Settings, load_settings
from provenance import Chain, utc_time
from storage import ContentStore, EncryptedStore, cid_for_bytes, cid_for_file


class DatasetCatalog(dg.ConfigurableResource):
    """Dataset versions (the partitions): each names its source files by CID, pinned when registered,
    so a version reloads the same bytes on any machine and names no local path."""

    root: str  # from the settings (`resources_for`)

    def register(
        self,
        version: str,
        source: str,
        *,
        store: ContentStore,
        provider: str | None = None,
        labeling: dict[str, Any],
        gold: str | None = None,
        validation: str | None = None,
        registered_at: str | None = None,
        claims: ClaimLookup | None = None,
    ) -> dict[str, Any]:
        """Pin the source's files and record the version once; `labeling` is the project spec
        (kind, field, choices). `gold` grades labelers (honeypot answers on training examples);
        `validation` is a trusted, held-out set training measures influence against (checked with
        `validation_examples`). Every source file is recorded with its `registered_at` (UTC, whole
        seconds; the files of one call share it; the `registered_at` argument sets it, e.g. when
        moving a catalog), and a file its provider already registered under any version keeps its
        earlier time: duplicates are credited to whoever registered first (the same bytes under
        another provider, e.g. a copied image file, take this call's time). Registering the same
        content again (from any folder) is a no-op and keeps the earlier time. A hub dataset
        (`hf:NAME`) is read here, once, offline from the local cache, and pinned as one Parquet source
        file: the version is those rows, whatever the hub serves later.

        With `claims` (the chain and the providers' addresses), a file its provider claimed on chain
        (`caravan claim`) by the time it is registered takes that claim's time and `claimed_by`, and
        a file someone else claimed first is refused (`provenance.claims.claim_problems`): what
        `caravan verify` holds the ingest record to. A private version's files are named by
        ciphertext: their providers claim the plaintext files, so each is looked up by its plaintext's
        CID. Where the chain holds the operator's key, the registration itself is dated on chain, and
        a file no claim dates takes that time, not this call's (`ClaimLookup.dated`)."""
        path = self._path(version)
        private = isinstance(store, EncryptedStore)
        if path.exists() and json.loads(path.read_text()).get("private", False) != private:
            raise ValueError(
                f"dataset version {version!r} is registered as {'public' if private else 'private'}; "
                "a version cannot change that: pick a new version name"
            )
        hf = source if source.startswith("hf:") else None
        payload = Payload.of(labeling)  # an image column of paths pins the files it names
        registered_at = _checked_time(registered_at) if registered_at else utc_time()  # one per call
        first_seen = self._first_registered()
        if hf:  # the hub's rows, pinned now: no later step reads the hub
            pinned = [_pinned_hub(store, hf, provider)]
            plaintexts = [(pinned[0][0][0],)]
        else:
            files = source_files(source, provider=provider, payload=payload)
            pinned = [((f.cid, f.provider), _pinned(store, p, f)) for p, f in files]
            plaintexts = [(f.cid, *(cid for _, cid in f.refs)) for _, f in files]  # what providers claim
        sources = [  # a file registered before (same content and provider) keeps its first time
            {**item, "registered_at": min(registered_at, first_seen.get(key, registered_at))}
            for key, item in pinned
        ]
        if claims is not None:
            sources = claims.dated(sources, plaintexts)
        entry = {
            "version": version,
            "sources": sources,
            "hf": hf,
            "registered_at": registered_at,
            "provider": provider,
            "labeling": labeling,
            "gold": _pinned(store, *source_files(gold)[0]) if gold else None,
            "validation": (
                _pinned(store, *source_files(validation, payload=payload)[0]) if validation else None
            ),
            # a private version's files are sealed (`store` is an EncryptedStore) and named by ciphertext
            **({"private": True} if private else {}),
        }
        if path.exists():
            known = json.loads(path.read_text())
            was, now = _timeless(known), _timeless(entry)
            same = was == now  # identical content keeps its earlier time
            if "sources" in known and not same:  # an entry without `sources` named a local path
                differs = sorted(k for k in {*was, *now} if was.get(k) != now.get(k))
                claims = ""
                if _unclaimed(was) == _unclaimed(now):
                    claims = (": the same files, but the chain's claims of them are not those they were "
                              "registered with (a reset chain, or another, holds other claims)")
                raise ValueError(
                    f"dataset version {version!r} is already registered with other {', '.join(differs)} "
                    f"({[s['name'] for s in known['sources']] or known['hf']}, labeled as "
                    f"{known.get('labeling')}){claims}; pick a new version name for different data, "
                    "labeling or claims"
                )
            if same:
                return known
        path.parent.mkdir(parents=True, exist_ok=True)
        tmp = path.with_suffix(".tmp")
        tmp.write_text(json.dumps(entry, indent=2))
        tmp.replace(path)
        return entry

    def reseal(self, version: str, reader: ContentStore, writer: EncryptedStore) -> dict[str, Any]:
        """Seal a private version's registered files again under `writer`'s (new) key, after a
        revocation: the next run re-derives every value from them under that key. The old
        ciphertexts stay pinned (records on chain name them)."""
        entry = self.lookup(version)

        def sealed(cid: str) -> str:
            return writer.put_bytes(reader.get(cid), cid_version=1, pin=True)

        def again(f: dict[str, Any]) -> dict[str, Any]:
            refs = [{**r, "cid": sealed(r["cid"])} for r in f.get("refs") or ()]
            return {**f, "cid": sealed(f["cid"]), **({"refs": refs} if refs else {})}

        entry = {
            **entry,
            "sources": [again(f) for f in entry["sources"]],
            "gold": again(entry["gold"]) if entry.get("gold") else None,
            "validation": again(entry["validation"]) if entry.get("validation") else None,
        }
        path = self._path(version)
        tmp = path.with_suffix(".tmp")
        tmp.write_text(json.dumps(entry, indent=2))
        tmp.replace(path)
        return entry

    def _first_registered(self) -> dict[tuple[str, str | None], str]:
        """Each source file's earliest registration time over every registered version, by CID and
        provider: a file registered before (under any version) by the same provider keeps its first time."""
        out: dict[tuple[str, str | None], str] = {}
        for path in sorted(Path(self.root).glob("*.json")) if Path(self.root).is_dir() else []:
            for f in json.loads(path.read_text()).get("sources") or []:
                key = (f["cid"], f.get("provider"))
                if f.get("registered_at"):
                    out[key] = min(f["registered_at"], out.get(key, f["registered_at"]))
        return out

    def validation(self, version: str, dataset: pa.Table, store: ContentStore) -> pa.Table | None:
        """The version's declared validation set (checked against `dataset`), None if it has none."""
        path = self._path(version)
        entry = json.loads(path.read_text()) if path.exists() else {}
        if not entry.get("validation"):
            return None
        file = SourceFile.from_json({**entry["validation"], "provider": "validation"})
        table = load_files([file], store.get, payload=Payload.of(entry.get("labeling")))
        return validation_examples(table, dataset, entry["labeling"]["choices"])

    def payload_field(self, version: str) -> str | None:
        """The column labelers see (the labeling spec's `field`), None for a version registered
        without one: training picks its recipe by that column's type."""
        path = self._path(version)
        entry = json.loads(path.read_text()) if path.exists() else {}
        return (entry.get("labeling") or {}).get("field")

    def load(self, version: str, store: ContentStore):
        """The registered rows of `version` (pa.Table), read back from the store by CID."""
        entry = self.lookup(version)
        payload = Payload.of(entry.get("labeling"))  # the payload column checked and typed (text, image)
        if entry["hf"] and not entry["sources"]:  # registered before hub rows were pinned
            return load_source(entry["hf"], provider=entry["provider"], payload=payload)
        return load_files([SourceFile.from_json(f) for f in entry["sources"]], store.get, payload=payload)

    def registered_at(self, version: str) -> dict:
        """When each source of `version` was registered (ISO 8601 UTC), by `source` column value and,
        for a file with its own provider, by (source, provider) too: the same bytes from two
        providers (copied image files) may have been registered at different times. A version
        registered before times were kept counts all its sources as registered together."""
        entry = self.lookup(version)
        if entry["hf"] and not entry["sources"]:  # registered before hub rows were pinned
            return {entry["hf"]: entry.get("registered_at") or ""}
        return registration_times(entry["sources"])

    def lookup(self, version: str) -> dict[str, Any]:
        """The catalog entry of `version` as `register` wrote it; a `dg.Failure` naming the
        `caravan ingest` command to run if the version is not registered."""
        path = self._path(version)
        if not path.exists():
            raise dg.Failure(
                f"dataset version {version!r} is not registered; run "
                f"`caravan ingest SOURCE --version {version}` first"
            )
        return json.loads(path.read_text())

    def _path(self, version: str) -> Path:
        if not version or "/" in version or version.startswith("."):
            raise ValueError(f"bad dataset version name {version!r}: use letters, digits, '-', '_' or '.'")
        return Path(self.root) / f"{version}.json"


def _checked_time(text: str) -> str:
    """A given registration time, in the records' time format (`provenance.utc_time`)."""
    try:
        moment = dt.datetime.strptime(text, "%Y-%m-%dT%H:%M:%SZ").replace(tzinfo=dt.UTC)
    except ValueError:
        raise ValueError(f"registered_at {text!r} is not UTC whole seconds (2025-01-31T12:00:00Z)") from None
    return utc_time(moment)


@dataclass(frozen=True)
class ClaimLookup:
    """The chain's source claims, and the providers' payout addresses (the contributors registry), for
    dating a version's files at registration (`DatasetCatalog.register`)."""

    chain: Chain
    addresses: Mapping[str, str]

    def dated(
        self, sources: list[dict[str, Any]], plaintexts: Sequence[Sequence[str]]
    ) -> list[dict[str, Any]]:
        """Each file its provider's address claimed by the time it was registered, dated by that claim
        (`claimed_by`; a table of image paths, by the latest of its own and its images' claims, where
        that address claimed them all: `provenance.file_claims`); a ValueError naming every file the
        chain says belongs to someone else. `plaintexts`: each file's plaintext CID, then its images',
        what its provider claimed (a sealed file's differ).

        Where the chain holds the operator's key, each file's registration is dated on chain first
        (`provenance.date_registrations`, a file registered before keeping its first time): that is its
        registration time, not this machine's clock, and a file no claim dates keeps it, with
        `dated_by` (the operator's address), so the operator cannot date a file before it held it."""
        from provenance import (
            claim_problems,
            claim_time,
            claims_deployed,
            date_registrations,
            file_claims,
            honoured,
            source_claims,
            with_claimed_as,
        )

        registered: dict[tuple[str, str | None], int] = {}
        if self.chain.address is not None and claims_deployed(self.chain):
            registered = date_registrations(self.chain, [(f["cid"], f.get("provider")) for f in sources])
        on_chain = source_claims(self.chain, [c for p in plaintexts for c in p])
        out, named = [], []
        for f, plaintext in zip(sources, plaintexts, strict=True):
            address = self.addresses.get(f.get("provider") or "")
            first = registered.get((f["cid"], f.get("provider")))
            at = claim_time(first) if first else f["registered_at"]
            when = honoured(file_claims(with_claimed_as(f, plaintext), on_chain), address, at)
            if when:
                out.append({**f, "registered_at": when, "claimed_by": address})
            else:
                out.append({**f, "registered_at": at, "dated_by": self.chain.address} if first else f)
            named.append(with_claimed_as(out[-1], plaintext))
        problems = claim_problems(named, on_chain, self.addresses)
        if problems:
            names = {f["cid"]: f["name"] for f in out}
            raise ValueError(
                "source files claimed on chain first by another address than their provider's: "
                + "; ".join(f"{names[cid]} ({cid}): {why}" for cid, why in problems)
                + ". Register each under the provider who claimed it, or give that provider the claiming "
                "address in the contributors registry"
            )
        return out


def _unclaimed(entry: dict[str, Any]) -> dict[str, Any]:
    """A timeless catalog entry without its files' claims (`claimed_by`)."""
    return {**entry, "sources": [{k: v for k, v in f.items() if k != "claimed_by"} for f in entry["sources"]]}


def _timeless(entry: dict[str, Any]) -> dict[str, Any]:
    """A catalog entry without its registration times (what "the same content" compares)."""
    out = {k: v for k, v in entry.items() if k != "registered_at"}
    if isinstance(out.get("sources"), list):
        out["sources"] = [{k: v for k, v in f.items() if k != "registered_at"} for f in out["sources"]]
    return out


def _pinned_hub(store: ContentStore, source: str, provider: str | None) -> tuple[tuple, dict[str, Any]]:
    """A hub dataset's rows (`hf:NAME`), pinned as one Parquet source file (sealed for a private
    version): ingest and every replay read the rows the version was registered with, whatever the hub
    serves later, and nothing reads the hub after registration. Returns (its content's CID and provider,
    its catalog item)."""
    data = table_bytes(hub_table(source))
    item = SourceFile(hub_file_name(source), store.put_bytes(data, cid_version=1, pin=True), provider)
    return (cid_for_bytes(data, cid_version=1), provider), item.to_json()


def _pinned(store: ContentStore, path: Path, file: SourceFile) -> dict[str, str | None]:
    """Pin a source file and the image files it names; a private version's are sealed first and
    named by their ciphertext's CID (each checked against the plaintext CID it was listed with)."""
    sealed = isinstance(store, EncryptedStore)
    named = [(path, file.cid), *((path.parent / name, cid) for name, cid in file.refs)]  # refs: its images
    stored = []
    for p, expected in named:
        cid = store.put_file(p, cid_version=1, pin=True)
        if (cid_for_file(p, cid_version=1) if sealed else cid) != expected:
            raise ValueError(f"{p} changed while it was being registered; register it again")
        stored.append(cid)
    refs = tuple((name, cid) for (name, _), cid in zip(file.refs, stored[1:], strict=True))
    return SourceFile(file.name, stored[0], file.provider, refs).to_json()


class LabelStudioResource(dg.ConfigurableResource):
    """A Label Studio server; the API token comes from the environment and is never logged."""

    url: str = "http://127.0.0.1:8080"
    project_prefix: str = "caravan"  # projects are titled "<prefix> <dataset version>"

    def client(self):
        """A `LabelStudioClient` for `url`, authenticated with the token from the environment."""
        from labeling import LabelStudioClient, labelstudio_token

        return LabelStudioClient(self.url, labelstudio_token())


class ContributorsResource(dg.ConfigurableResource):
    """The contributors registry file: contributor id -> EVM address (never personal data on chain)."""

    path: str  # from the settings (`resources_for`)

    def registry(self):
        """The `ContributorsRegistry` loaded from `path` (ContributorsError if it is missing or invalid)."""
        from labeling import ContributorsRegistry

        return ContributorsRegistry.load(self.path)


class ChainResource(dg.ConfigurableResource):
    """An EVM JSON-RPC endpoint; the key comes from CARAVAN_PRIVATE_KEY or a keystore, never from config."""

    rpc_url: str = "http://127.0.0.1:8545"
    chain_dir: str  # from the settings (`resources_for`)
    auto_deploy: bool = True  # local chains only; a real chain's contracts are deployed on purpose

    def client(self):
        """A `Chain` on `rpc_url` with its deployments in `chain_dir`; with `auto_deploy`, missing contracts
        are deployed first."""
        chain = self._chain()
        if self.auto_deploy:
            chain.deploy()  # idempotent: contracts already at the recorded addresses are kept
        return chain

    def deployed(self):
        """The `Chain`, where Caravan's contracts were deployed from here (a deployments file in
        `chain_dir`), deploying nothing; None where none were: there is nothing on chain to read."""
        from provenance import deployed_from

        return self._chain() if deployed_from(self.chain_dir) else None

    def _chain(self):
        from provenance import Chain

        return Chain.from_env(
            {**os.environ, "CARAVAN_RPC_URL": self.rpc_url, "CARAVAN_CHAIN_DIR": self.chain_dir}
        )


class LedgerResource(dg.ConfigurableResource):
    """The serving ledger (API keys, receipts, epochs): a SQLite file or a PostgreSQL URL."""

    path: str  # from the settings (`resources_for`)

    def ledger(self):
        """The `Ledger` at `path`, opened as every process opens it (`Ledger.from_env`)."""
        from serving import Ledger

        return Ledger.from_env(self.path)


def resources_for(settings: Settings | None = None) -> dict[str, Any]:
    """The resource set of `settings.deployment` (`local` or `prod`)."""
    s = settings or load_settings()
    if s.deployment not in ("local", "prod"):
        raise ValueError(f"CARAVAN_DEPLOYMENT={s.deployment!r}: use 'local' or 'prod'")
    store = StoreResource(
        backend="embedded" if s.deployment == "local" else ("pinning" if s.pinning_url else "kubo"),
        store_dir=str(s.store_dir),
        kubo_url=s.kubo_url,
        pinning_url=s.pinning_url,
        keyring_dir=str(keyring_dir(s)),
        holder_keyfile=str(holder_keyfile(s)),
    )
    index = AssetIndex(pointer_dir=str(s.pointer_dir))
    return {
        "store": store,
        "index": index,
        "catalog": DatasetCatalog(root=str(s.catalog_dir)),
        "labelstudio": LabelStudioResource(url=s.labelstudio_url, project_prefix=s.labelstudio_prefix),
        "contributors": ContributorsResource(path=str(s.contributors_file)),
        "chain": ChainResource(
            rpc_url=s.rpc_url, chain_dir=str(s.chain_dir), auto_deploy=s.deployment == "local"
        ),
        "lineage": LineageResource(index_dir=str(s.lineage_dir)),
        # A database URL goes in as the environment variable's name (dg.EnvVar), so a password inside
        # it never shows in Dagster's run config or UI; a file path is plain config.
        "ledger": LedgerResource(
            path=dg.EnvVar("CARAVAN_LEDGER") if isinstance(s.ledger_path, str) else str(s.ledger_path)
        ),
        "io_manager": ContentStoreIOManager(store=store, index=index),
    }
