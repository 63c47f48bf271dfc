"""CID throughput: our UnixFS importer against plain sha256 (the floor every CID pays) and `ipfs_cid`.

Hashes one file of deterministic random bytes (512 MiB by default, `--size-mib`) made in a temp
dir. Ours and sha256 run interleaved, `--reps` times each, best of each kept, so a neighbour's
load on the shared cores hits both alike; both read the file the same way (readinto into one
reused 8 MiB buffer, the page cache warm). `ipfs_cid` (Debian's Go importer, CIDv0) runs on the
same file and its CID must equal ours.

Then the store path, plaintext against private: the same file put into a fresh embedded
`BlockStore` as it is (`put_file`), and sealed on the way in (`EncryptedStore.put_file`: AES-SIV
in 1 MiB segments, streamed), in `--store-reps` back-to-back pairs; the ratio is the median of the
pairs' ratios (one pair's ratio cancels the machine's drift, the median its outliers), and the goal
is encrypted/plaintext <= 1.5. The last line is one JSON object.

    .venv/bin/python bench/cid_throughput.py [--size-mib 512] [--reps 3] [--store-reps 5] [--seed 0]
"""

from __future__ import annotations

import argparse
import hashlib
import json
import os
import random
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from storage import BlockStore, DataKey, EncryptedStore, cid_for_file  # noqa: E402
from storage.unixfs import READ_SIZE  # noqa: E402

MIB = 1 << 20
IPFS_CID = "/usr/bin/ipfs_cid"


def make_file(path: Path, size: int, seed: int) -> None:
    rng = random.Random(seed)
    with open(path, "wb") as out:
        left = size
        while left:
            n = min(left, 8 * MIB)
            out.write(rng.randbytes(n))
            left -= n


def sha256_file(path: Path) -> str:
    """Plain sha256 of the file, read exactly as the importer reads it."""
    h = hashlib.sha256()
    buf = bytearray(READ_SIZE)
    view = memoryview(buf)
    with open(path, "rb", buffering=0) as f:
        while n := f.readinto(buf):
            h.update(view[:n])
    return h.hexdigest()


def timed(fn, *args, **kwargs) -> tuple[float, object]:  # noqa: ANN001
    start = time.perf_counter()
    result = fn(*args, **kwargs)
    return time.perf_counter() - start, result


def ipfs_cid(path: Path) -> tuple[float | None, str | None]:
    if not Path(IPFS_CID).exists():
        return None, None
    seconds, out = timed(subprocess.run, [IPFS_CID, str(path)], capture_output=True, text=True, check=True)
    return seconds, json.loads(out.stdout)["CIDv0"]  # type: ignore[attr-defined]


def store_paths(path: Path, tmp: Path, reps: int) -> tuple[list[float], list[float]]:
    """Seconds of each rep to put the file into a fresh embedded store: as it is, and sealed, in pairs."""
    key = DataKey(bytes(range(64)))  # fixed: the bench is deterministic
    plain_s, sealed_s = [], []
    for rep in range(reps):  # interleaved, each into an empty store (no block is skipped as known)
        for name, times in (("plain", plain_s), ("sealed", sealed_s)):
            root = tmp / f"store-{name}-{rep}"
            store = BlockStore(root)
            target = store if name == "plain" else EncryptedStore(store, [key])
            times.append(timed(target.put_file, path)[0])
            shutil.rmtree(root, ignore_errors=True)
    return plain_s, sealed_s


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--size-mib", type=int, default=512)
    parser.add_argument("--reps", type=int, default=3)
    parser.add_argument("--store-reps", type=int, default=5,
                        help="plain/sealed pairs; the ratio is the median of the pairs' ratios")
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args()
    size = args.size_mib * MIB
    tmp = Path(tempfile.mkdtemp(prefix="cid-bench-"))
    try:
        path = tmp / "data.bin"
        make_file(path, size, args.seed)
        sha256_file(path)  # warm the page cache once, outside any timing
        ours_s, sha_s, v1_s = [], [], []
        cid = None
        for _ in range(args.reps):  # interleaved: both see the same neighbours
            seconds, cid = timed(cid_for_file, path)
            ours_s.append(seconds)
            sha_s.append(timed(sha256_file, path)[0])
            v1_s.append(timed(cid_for_file, path, cid_version=1)[0])
        oracle_s, oracle_cid = ipfs_cid(path)
        plain_reps, sealed_reps = store_paths(path, tmp, args.store_reps)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)

    mb = size / 1e6

    def rate(seconds: float | None) -> float | None:
        return round(mb / seconds, 1) if seconds else None

    ours, sha, v1, oracle = rate(min(ours_s)), rate(min(sha_s)), rate(min(v1_s)), rate(oracle_s)
    ratio = round(ours / sha, 3) if ours and sha else None
    print(f"file: {args.size_mib} MiB of seeded random bytes (seed {args.seed}), best of {args.reps}, "
          f"{os.cpu_count()} cores")
    print(f"ours (CIDv0, dag-pb leaves): {ours} MB/s   {cid}")
    print(f"ours (CIDv1, raw leaves):    {v1} MB/s")
    print(f"hashlib.sha256:              {sha} MB/s")
    print(f"ratio ours/sha256:           {ratio}   (goal >= 0.8)")
    if oracle is None:
        print(f"ipfs_cid: {IPFS_CID} missing (apt-get install ipfs-cid)")
    else:
        print(f"ipfs_cid (Go, one run):      {oracle} MB/s   {oracle_cid}")
        if oracle_cid != cid:
            print(f"error: ipfs_cid gives {oracle_cid} but ours gives {cid}", file=sys.stderr)
            sys.exit(1)
    # each pair ran back to back, so its ratio cancels the machine's drift; the median drops outliers
    plain_store_s, sealed_store_s = statistics.median(plain_reps), statistics.median(sealed_reps)
    pair_ratios = [s / p for p, s in zip(plain_reps, sealed_reps, strict=True)]
    store_ratio = round(statistics.median(pair_ratios), 3)
    plain_store, sealed_store = rate(plain_store_s), rate(sealed_store_s)
    print(f"store path, plaintext (BlockStore.put_file):        {plain_store} MB/s   {plain_store_s:.2f} s"
          f"   (median of {args.store_reps})")
    print(f"store path, encrypted (EncryptedStore.put_file):    {sealed_store} MB/s   {sealed_store_s:.2f} s")
    print(f"ratio encrypted/plaintext time:                     {store_ratio}   (goal <= 1.5; median of "
          f"{len(pair_ratios)} pairs, range {min(pair_ratios):.3f}-{max(pair_ratios):.3f})")
    status = Path("/proc/self/status").read_text()
    hwm = next(line.split()[1] for line in status.splitlines() if line.startswith("VmHWM:"))
    print(f"peak RSS of this process:    {int(hwm) // 1024} MiB (one {READ_SIZE // MIB} MiB read buffer)")
    print(
        json.dumps(
            {
                "ours_mb_s": ours,
                "sha256_mb_s": sha,
                "ratio": ratio,
                "ipfs_cid_mb_s": oracle,
                "store_plain_mb_s": plain_store,
                "store_encrypted_mb_s": sealed_store,
                "store_encrypted_ratio": store_ratio,
            }
        )
    )


if __name__ == "__main__":
    main()
