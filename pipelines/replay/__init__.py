"""Replay: an auditor retrains a published run and checks its example scores, weights and root.

The auditor fetches what the run's records name (the labeled data, the recipe and seed, the
tables the split was computed from, an hf-local run's starting model by the CIDs of its files),
retrains with the same code, and compares:

- the labels: the consensus the consensus record stores against the consensus recomputed from the
  answers, gold and label review it names (by the method it names; the review itself cross-fitted
  again, `check_review`: bit for bit on the reviewed run's platform, elsewhere within the band of two
  cross-fits here, as the scores below); the labeled data trained on
  against the snapshot's rows with those labels; and the examples, example credit, annotations and
  consensus the split was computed from against those the ingest, snapshot and consensus records
  name. Without this a publisher could train and pay on labels (or credit) of its choosing, every
  CID and score consistent;
- the examples and their credit against what this code makes of the source files the ingest record
  names (`check_ingest`; the pinned snapshot must hold them, `check_snapshot`), and the validation set
  and gold against those the version declared
  (`check_declared`): else examples could be moved between providers, copies credited to their copier,
  or targets picked to favour a provider, with every later record consistent;
- the input encoding (what serving encodes every paid request by: a table's columns and scale, a
  tokenizer, an image policy) against the one the replay made from the run's data and recipe;
- the trained model and its TRAK features (what serving loads, and splits each prediction's fee by)
  against those the training record names: a publisher could otherwise serve, and pay predictions by,
  a model other than the one its scores were measured on. Where the replay is bit for bit, the same
  bytes; elsewhere through the stored checkpoints, without training: the model must be the last of
  them, the features what they give here, and the scores they give within the band below;
- the example scores, the providers' left-out values and the weights recomputed from them,
  contributor by contributor, and the root of the replayed weights against the on-chain root: bit
  for bit where the run was trained on the same torch build, CPU architecture, CPU capability and
  vector flags (the platform the training record names; replay runs torch with the run's own thread
  count, whatever this machine's cores).
- On another CPU that has the run's instruction sets, a process started with the pins of the run's
  kernels (`compute_platform.run_kernels`; `caravan verify --replay` restarts itself with them) runs
  what the run ran: the first retrain is checked bit for bit, and only if it differs (another CPU's
  caches may still change a kernel's blocking) does replay fall back to the band below.
- Elsewhere, training amplifies any last-bit difference: the demo's image run replayed under ATen's
  unvectorized kernels moved scores by up to 4.5e-4 (the largest is 2e-3) and pay by up to 111 bps.
  So the run is retrained twice on this machine, side by side (each on half its cores), the second
  with every weight a last bit off after every step (256 units under AdamW, whose runs part only
  where rounding flips a choice: `attribution.nudge_units`), as another platform's rounding leaves it
  (`attribution.nudged_steps`: a thread count alone repeats a run on a GPU's deterministic kernels,
  or a small model's, and leaves no band), and the stored scores may differ from the first replay by
  up to ``SPREAD_FACTOR`` times the largest gap between the two (at least the score tolerance recorded
  with the run), each contributor's n summed scores (a provider's examples, a labeler's answered ones)
  by ``SUM_SIGMAS`` x sqrt(n) + ``SUM_DRIFT`` x n times the two's root mean square score gap (a shift
  of all of one provider's scores, each within the per-score band, moves its sum n times), and the
  left-out values by up to ``VALUE_SIGMAS`` standard errors of their rounding noise
  (``attribution.value_noise``, from every seed's pair of retrains). Pay is arithmetic on those
  tables, the same on any machine: the stored weights must be exactly what the stored scores and
  values give (the replay's own bps move with its rounding: by up to 38 bps on the demo's image run
  from AVX2 to AVX-512 kernels), and their root the one on chain. A change smaller than this machine's
  own rounding cannot be told from rounding: replay on the recorded platform, or a CPU that runs its
  kernels, for a bit-for-bit check.

- A run trained on a GPU (`TrainingConfig.device`) is retrained on this machine's GPU: bit for bit
  where the first retrain repeats it (the same GPU, torch, CUDA and cuDNN: the image and text recipes
  did on an H200), else within the band of two retrains there. Without a GPU replay refuses
  (`replay_platform`).

Replay refuses code other than the code that trained the run: it names the commit to check out.

Modules: `run` (the driver, `replay_run`), `inputs` (the labels, examples, validation set, gold and
review made again), `outputs` (the model, features and encoding served), `band` (how far a replay off
the run's platform may land), `platform` (where and on which code a replay may run), `tables` and
`report`.
"""

from pipelines.replay.band import (
    NUDGE_SALT,
    SPREAD_FACTOR,
    SUM_DRIFT,
    SUM_SIGMAS,
    VALUE_SIGMAS,
    Band,
)
from pipelines.replay.inputs import check_declared, check_ingest, check_review, check_snapshot
from pipelines.replay.outputs import CHECKPOINT_SCORE_RTOL, FEATURE_RTOL
from pipelines.replay.platform import ReplayRefused, replay_kernels, replay_platform, same_platform
from pipelines.replay.report import ReplayReport
from pipelines.replay.run import Retrained, parted_at, replay_run

__all__ = [
    "CHECKPOINT_SCORE_RTOL",
    "FEATURE_RTOL",
    "NUDGE_SALT",
    "SPREAD_FACTOR",
    "SUM_DRIFT",
    "SUM_SIGMAS",
    "VALUE_SIGMAS",
    "Band",
    "ReplayRefused",
    "ReplayReport",
    "Retrained",
    "check_declared",
    "check_ingest",
    "check_review",
    "check_snapshot",
    "parted_at",
    "replay_kernels",
    "replay_platform",
    "replay_run",
    "same_platform",
]
