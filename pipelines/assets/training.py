"""Training stage: the model trains on the consensus-labeled data while every example is scored.

Held-out targets are chosen by example id (a hash bucket), so the split depends on nothing
but the content and stays the same for every rerun an auditor makes.
"""

import copy
import dataclasses
import hashlib
import json
from collections.abc import Iterator
from pathlib import Path
from typing import Any, get_args, get_type_hints

import dagster as dg
import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

from attribution import (
    HF_CONFIG,
    HF_TOKENIZER_FILE,
    IMAGE_CONFIG,
    LABELS,
    LEFT_OUT_RUNS,
    MAX_CATEGORIES,
    MLP_CONFIG,
    TEXT_CONFIG,
    AttributionError,
    DeviceUnavailableError,
    EncodedSplit,
    LocalModel,
    ModelTrakFeatures,
    PayloadSplit,
    RecipeSizes,
    TrainConfig,
    TrainResult,
    checkpoint_features,
    distinct_rows,
    encode_payload_split,
    encode_split,
    features_to_bytes,
    mlp_left_out,
    mlp_valued_by_trak,
    model_features,
    model_features_to_bytes,
    model_left_out,
    model_logits,
    model_to_bytes,
    payload_encoding_to_json,
    provider_groups,
    task_model_to_bytes,
    tensors_digest,
    train_model,
    train_split,
    train_trak_valued,
    valued_by_trak,
)
from pipelines.assets.labeling import Recount, recount
from pipelines.compute_platform import pinned_threads, training_platform
from pipelines.content_io import AssetIndex, StoredValue, StoreResource, store_value
from pipelines.datasets import DatasetError
from pipelines.lineage import LineageResource, now, pipeline_code
from pipelines.partitions import dataset_versions
from pipelines.report import histogram_md, md_table
from pipelines.resources import DatasetCatalog
from provenance import CONSENSUS, SNAPSHOT, TRAINING, TrainingRecord
from storage import ContentStore, StorageError, put_folder, read_parquet


class TrainingConfig(dg.Config):
    """The run's recipe. `recipe="auto"` trains what fits the payload (the labeling spec's field):
    `text-transformer` for a text column, `image-cnn` for image bytes, `mlp` for numeric columns;
    `hf-local` fine-tunes the Hugging Face sequence classifier saved in `model_dir` on a text column.
    Settings left `None` take the recipe's own defaults (`RECIPE_DEFAULTS`: attribution's `MLP_CONFIG`,
    `TEXT_CONFIG`, `IMAGE_CONFIG`, `HF_CONFIG`)."""

    recipe: str = "auto"
    # hf-local: a local directory written by save_pretrained (config.json, weights, the fast tokenizer's
    # tokenizer.json). Its files are stored by CID and the record names them; the path itself is never
    # recorded (`recorded()`), and nothing is downloaded.
    model_dir: str | None = None
    hidden: list[int] = [64]
    epochs: int | None = None
    batch_size: int | None = None
    lr: float | None = None
    lr_schedule: str | None = None  # "constant" or "linear" (to zero over `epochs`); None: the recipe's
    optimizer: str | None = None
    weight_decay: float = 1e-4
    # stop once this many epochs pass without a lower target loss, keeping the best epoch (`epochs` is then
    # a ceiling); None: the recipe's default, 0: train every epoch
    patience: int | None = None
    seed: int = 0
    target_fraction: float = 0.15
    # TRAK's projection: dims of the MLP's whole gradient, of each layer for the other recipes (None:
    # the recipe's default)
    trak_k: int | None = None
    # TRAK's kernel: "fisher" (the model's own predictions; the MLP's default, one gradient pass per class,
    # so its time grows with the classes) or "empirical" (the gradients' Gram; text and image); None: the
    # recipe's
    trak_kernel: str | None = None
    # text-transformer: BPE vocabulary, the token cap (longer texts keep their first tokens, counted)
    vocab_size: int = 2000
    max_length: int = 128
    d_model: int = 64
    n_layers: int = 2
    n_heads: int = 4
    # image-cnn: channels per stage; how images of another size than the most common are sized
    channels: list[int] = [16, 32]
    image_resize: str = "squash"
    # what pays: "auto" (= "trak") is TRAK value (`attribution.valued_by_trak`, `mlp_valued_by_trak`:
    # summed per-step scores overpay high-loss examples and redundant providers); "inrun" the per-step
    # scores
    value: str = "auto"
    # providers are valued by retraining without each one (`attribution.model_left_out`: one plain
    # training per provider, one more for one with copies) when there are at most this many; beyond it,
    # or at 0, by their examples' summed scores (the weighting record says which)
    left_out_max: int = 32
    left_out_runs: int = LEFT_OUT_RUNS  # seeds each provider is left out with (its value is the mean)
    # labelers too, up to left_out_max of them: one retrain per labeler and seed on the consensus refitted
    # without its answers (`WeightingConfig.labelers: left_out` pays by them)
    left_out_labelers: bool = False
    # where every training of the run runs: "cpu", "cuda" (a GPU; refused where torch sees none) or "auto"
    # (the GPU where there is one). Records name the device it resolved to, and the GPU
    device: str = "cpu"

    def train_config(self, recipe: str = "mlp") -> TrainConfig:
        """The attribution room's settings for this recipe (the one mapping; sharding reuses it)."""
        defaults = RECIPE_DEFAULTS[recipe]
        return dataclasses.replace(
            defaults,
            epochs=self.epochs or defaults.epochs,
            batch_size=self.batch_size or defaults.batch_size,
            lr=self.lr if self.lr is not None else defaults.lr,
            lr_schedule=self.lr_schedule or defaults.lr_schedule,
            optimizer=self.optimizer or defaults.optimizer,
            weight_decay=self.weight_decay,
            trak_k=self.trak_k if self.trak_k is not None else defaults.trak_k,
            trak_kernel=self.trak_kernel or defaults.trak_kernel,
            patience=(self.patience if self.patience is not None else defaults.patience) or None,
            device=self.device,
        )

    def on_device(self) -> "TrainingConfig":
        """This config with `device` resolved ("auto" to "cuda" or "cpu"), so that the run id and the
        record name where it trained; one error before training where the device is unknown or absent."""
        if self.device not in DEVICES:
            raise dg.Failure(f"device {self.device!r} is unknown; use one of {', '.join(DEVICES)}")
        try:
            device = TrainConfig(device=self.device).torch_device().type
        except DeviceUnavailableError as exc:
            raise dg.Failure(f"device {self.device!r} needs a GPU, but torch sees no CUDA device here "
                             "(torch.cuda.is_available() is False): use 'auto' (the GPU where there is one) "
                             "or 'cpu'") from exc
        return self.model_copy(update={"device": device})

    def recorded(self) -> dict[str, Any]:
        """The settings as a record names them: everything but the local `model_dir` (a run names its
        starting model by the CIDs of its files, as sources are named by content, never by path)."""
        return self.model_dump(exclude={"model_dir"})

    def sizes(self) -> RecipeSizes:
        """The text and image recipes' model sizes from this config, for encoding a payload run."""
        return RecipeSizes(
            vocab_size=self.vocab_size, max_length=self.max_length, d_model=self.d_model,
            n_layers=self.n_layers, n_heads=self.n_heads, channels=tuple(self.channels),
            image_resize=self.image_resize,
        )


# Each recipe's defaults are its own (attribution.recipes: SGD for the MLP, AdamW decayed to zero for the
# transformer and the conv net, the transformer stopping early, a fine-tuning rate for a pretrained model;
# each says why beside it). Decayed rates and early stopping make a retrain's outcome reproducible: in the
# royalty bench's worlds the providers' truth agreed with itself across seeds at 0.26 (image) and 0.32
# (text) trained at a constant rate, at 0.90 and 0.80 now.
RECIPE_DEFAULTS: dict[str, TrainConfig] = {
    "mlp": MLP_CONFIG, "text-transformer": TEXT_CONFIG, "image-cnn": IMAGE_CONFIG, "hf-local": HF_CONFIG,
}
LR_SCHEDULES = get_args(get_type_hints(TrainConfig)["lr_schedule"])  # the attribution room's, named once
TRAK_KERNELS = get_args(get_type_hints(TrainConfig)["trak_kernel"])
DEVICES = get_args(get_type_hints(TrainConfig)["device"])
PAYLOAD_RECIPES = {"text": "text-transformer", "image": "image-cnn"}  # what `auto` picks per payload kind
HF_RECIPE = "hf-local"
RECIPE_KINDS = {**{r: k for k, r in PAYLOAD_RECIPES.items()}, HF_RECIPE: "text"}  # the payload each reads


def recipe_for(config: TrainingConfig, table: pa.Table, field: str | None) -> tuple[str, str | None]:
    """(recipe, payload column): the configured recipe, or under "auto" the one the payload's type
    calls for (a string column: text; binary: image; otherwise numeric columns and the MLP)."""
    if config.recipe not in ("auto", "mlp", *RECIPE_KINDS):
        raise dg.Failure(f"recipe {config.recipe!r} is unknown; use auto, mlp, {', '.join(RECIPE_KINDS)}")
    if config.model_dir is not None and config.recipe != HF_RECIPE:
        raise dg.Failure(f"model_dir is read by recipe {HF_RECIPE!r} only, not {config.recipe!r}")
    if config.lr_schedule is not None and config.lr_schedule not in LR_SCHEDULES:
        raise dg.Failure(f"lr_schedule {config.lr_schedule!r} is unknown; use {' or '.join(LR_SCHEDULES)} "
                         "(linear: to zero over the epochs)")
    if config.patience is not None and config.patience < 0:
        raise dg.Failure(f"patience must be >= 0 epochs (0: train every epoch), got {config.patience}")
    if config.trak_kernel is not None and config.trak_kernel not in TRAK_KERNELS:
        raise dg.Failure(f"trak_kernel {config.trak_kernel!r} is unknown; use {' or '.join(TRAK_KERNELS)} "
                         "(fisher: the model's own predictions, one pass per class; empirical: the "
                         "gradients')")
    kind = None
    if field and field in table.column_names:
        t = table.schema.field(field).type
        kind = "text" if pa.types.is_string(t) or pa.types.is_large_string(t) else None
        kind = "image" if pa.types.is_binary(t) or pa.types.is_large_binary(t) else kind
    if config.recipe == "auto":
        return (PAYLOAD_RECIPES[kind], field) if kind else ("mlp", None)
    if config.recipe == "mlp":
        return "mlp", None
    wanted = RECIPE_KINDS[config.recipe]
    if kind != wanted:
        raise dg.Failure(
            f"recipe {config.recipe!r} needs a {wanted} payload column, but the labeling field {field!r} "
            f"is not one; use recipe='auto' or label a {wanted} dataset"
        )
    return config.recipe, field


def split_targets(example_ids: list[str], fraction: float) -> np.ndarray:
    """True for held-out targets: the first 32 bits of the (sha256) example id fall below `fraction`."""
    if not 0.0 < fraction < 1.0:
        raise dg.Failure(f"target_fraction must be between 0 and 1, got {fraction}")
    buckets = np.array([int(e[:8], 16) for e in example_ids], dtype=np.float64) / 2**32
    return buckets < fraction


def run_id_of(labeled_cid: str, config: TrainingConfig, base_model: str | None = None) -> str:
    """The attribution run's id: labeled data, recipe, starting model (its file table's CID) and code,
    so new labels, another model or new code make a new run; a local path never enters it."""
    code = json.dumps(pipeline_code().to_json(), sort_keys=True)
    settings = config.model_dump_json(exclude={"model_dir"})
    base = f"\n{base_model}" if base_model else ""
    return hashlib.sha256(f"{labeled_cid}\n{settings}\n{code}{base}".encode()).hexdigest()[:16]


def checked_model_dir(model_dir: str | None) -> Path:
    """The hf-local model directory, if it holds what save_pretrained writes for a model and its fast
    tokenizer; else a failure naming what is missing (checked before anything is stored)."""
    if not model_dir:
        raise dg.Failure(
            f"recipe {HF_RECIPE!r} needs model_dir: a local directory written by save_pretrained "
            "(config.json, weights, tokenizer.json)"
        )
    path = Path(model_dir)
    missing = [f for f in ("config.json", HF_TOKENIZER_FILE) if not (path / f).is_file()]
    if not path.is_dir() or missing:
        what = "does not exist" if not path.is_dir() else f"has no {' or '.join(missing)}"
        raise dg.Failure(
            f"model_dir {model_dir!r} {what}: give a local directory where save_pretrained wrote the "
            "model and its fast tokenizer (nothing is downloaded)"
        )
    return path


def stored_local_model(store: ContentStore, config: TrainingConfig) -> LocalModel:
    """An hf-local run's model directory, its files stored and pinned by CID (`storage.put_folder`):
    the record names the file table's CID, never `model_dir`."""
    path = checked_model_dir(config.model_dir)
    files, table = put_folder(store, path)
    return LocalModel(path, files, table.cid_of(HF_TOKENIZER_FILE))


def train_labeled(
    labeled: pa.Table, config: TrainingConfig, *, run_id: str, validation: pa.Table | None = None,
    field: str | None = None, local: LocalModel | None = None,
) -> tuple[EncodedSplit | PayloadSplit, TrainResult]:
    """Split, encode and train with attribution: the one recipe the asset runs and a replay reruns.

    Influence is measured against `validation` (trusted labels, never trained on) when the version
    declares one; otherwise against a hash split of the crowd-labeled rows (`split_targets`). Text and
    image payloads (`field`) train a `ModelTask` recipe; numeric columns the MLP. The hf-local recipe
    starts from `local` (the stored model directory: `stored_local_model`, or fetched by replay).
    Paid by TRAK value (the default), a recipe trains plainly and keeps its checkpoints
    (`train_trak_valued`: 4-7x faster than per-step scoring that pay would discard); the MLP keeps
    its per-step driver, which at its sizes is faster than a plain torch loop.
    """
    table = labeled.sort_by("example_id")
    if validation is None:
        mask = split_targets(table["example_id"].to_pylist(), config.target_fraction)
    else:
        mask = np.r_[np.zeros(table.num_rows, bool), np.ones(validation.num_rows, bool)]
        table = pa.concat_tables([table, validation], promote_options="permissive")
    recipe, column = recipe_for(config, table, field)
    cfg = config.train_config(recipe)
    if (recipe == HF_RECIPE) != (local is not None):
        raise dg.Failure(f"only recipe {HF_RECIPE!r} starts from a local model, and needs one ({recipe!r})")
    if column is None:
        split = encode_split(table, mask)
        result = train_split(split, config.hidden, cfg, seed=config.seed, run_id=run_id)
        if value_method(config) == "trak":
            result = mlp_valued_by_trak(result, split.X, split.y, split.X_targets, split.y_targets,
                                        seed=config.seed)
        return split, result
    payload = encode_payload_split(table, mask, kind=RECIPE_KINDS[recipe], column=column, config=cfg,
                                   sizes=config.sizes(), local=local)
    train = train_trak_valued if value_method(config) == "trak" else train_model
    return payload, train(payload.task, payload.train, payload.example_ids, payload.targets,
                          seed=config.seed, run_id=run_id)


def revalued(
    split: EncodedSplit | PayloadSplit, result: TrainResult, config: TrainingConfig,
    checkpoints: list[dict[str, Any]],
) -> TrainResult:
    """``result`` as ``checkpoints`` (a stored run's, in order) make it, without training: the model is the
    last of them, the TRAK features are built from them, and TRAK-valued scores are those features' value
    for the targets, as `train_labeled` makes all three from its own checkpoints (in-run scores, summed
    over the steps, stay the replay's). Off the run's platform replay checks a stored model and features
    so: evaluation rounds differently there too, but training no longer amplifies it."""
    model = copy.deepcopy(result.model)
    model.load_state_dict(checkpoints[-1])
    base = dataclasses.replace(result, model=model, checkpoints=list(checkpoints))
    trak = value_method(config) == "trak"
    if isinstance(split, PayloadSplit):
        features = model_features(split.task, checkpoints, split.train, seed=config.seed)
        return valued_by_trak(base, features, split.targets) if trak else dataclasses.replace(
            base, features=features)
    base = dataclasses.replace(
        base, features=checkpoint_features(result.task, checkpoints, split.X, split.y, seed=config.seed,
                                           epochs=result.epochs))
    if not trak:
        return base
    return mlp_valued_by_trak(base, split.X, split.y, split.X_targets, split.y_targets, seed=config.seed)


def training_digests(
    split: EncodedSplit | PayloadSplit, result: TrainResult, config: TrainingConfig
) -> dict[str, Any]:
    """What the run trained from and through, by digest (`tensors_digest`): its encoded inputs (training
    rows, targets and their labels), its initial weights and each checkpoint. Recorded with the run; a
    replay compares its own and says where it parted from the run (`replay.parted_at`)."""
    if isinstance(split, PayloadSplit):
        inputs = {**{f"train.{k}": v for k, v in split.train.items()},
                  **{f"targets.{k}": v for k, v in split.targets.items()}}
        initial = split.task.fresh(config.seed).state_dict()
    else:
        inputs = {"X": split.X, "y": split.y, "X_targets": split.X_targets, "y_targets": split.y_targets}
        initial = result.task.spec.build(config.seed).state_dict()
    return {"inputs": tensors_digest(inputs), "initial": tensors_digest(initial),
            "checkpoints": [tensors_digest(c) for c in result.checkpoints]}


def left_out_value(
    split: EncodedSplit | PayloadSplit, labeled: pa.Table, result: TrainResult, config: TrainingConfig,
    credit: pa.Table | None, consensus_without: Recount | None = None,
) -> pa.Table | None:
    """Each provider's value by retraining without the training rows it is paid for (`credit`: the
    ingest's duplicate grouping; copies beyond a group's representative count only where they hurt),
    the run's recipe and seed, the rest labeled by their consensus recomputed without the left-out
    examples' answers (`consensus_without`, from `pipelines.assets.labeling.recount`; without it the
    recorded labels); and, with `config.left_out_labelers` and `consensus_without`, each labeler's by
    retraining on the consensus recomputed without its answers (rows left with none are left out), as
    the royalty bench's truth measures it, up to `left_out_max` labelers. The `LEFT_OUT_SCHEMA` table,
    or None where the run has more providers than `config.left_out_max` (pay then goes by summed
    scores)."""
    ids = split.example_ids
    row = {e: i for i, e in enumerate(labeled["example_id"].to_pylist())}
    providers, recorded = labeled["provider"].to_pylist(), labeled["label"].to_pylist()
    groups = provider_groups(ids, [providers[row[e]] for e in ids], credit)
    distinct = distinct_rows(ids, credit)
    if config.left_out_max < 0:
        raise dg.Failure(f"left_out_max must be >= 0, got {config.left_out_max}")
    if len(groups) > config.left_out_max:
        return None
    index = {str(c): i for i, c in enumerate(split.encoding.classes)}

    def labels_of(consensus: pa.Table, rows: list[str], missing: int | None) -> np.ndarray:
        """`rows`' labels in `consensus`: a label outside the run's classes keeps the recorded one, a row
        without a consensus label is `missing` (None: its recorded label)."""
        label = dict(zip(consensus["example_id"].to_pylist(), consensus["label"].to_pylist(), strict=True))
        recorded_index = [index[str(recorded[row[e]])] for e in rows]
        return np.asarray([index.get(str(label[e]), r) if e in label else (r if missing is None else missing)
                           for e, r in zip(rows, recorded_index, strict=True)])

    def relabel(keep: np.ndarray) -> np.ndarray:
        consensus = consensus_without([e for e, k in zip(ids, keep, strict=True) if not k])
        return labels_of(consensus, [e for e, k in zip(ids, keep, strict=True) if k], None)

    again = relabel if consensus_without is not None else None
    labelers = None
    if (config.left_out_labelers and consensus_without is not None
            and len(consensus_without.labelers) <= config.left_out_max):
        labelers = {a: labels_of(consensus_without((), labeler=a), ids, -1)
                    for a in consensus_without.labelers}
    if isinstance(split, PayloadSplit):
        return model_left_out(split.task, split.train, split.targets, groups, seed=config.seed,
                              runs=config.left_out_runs, relabel=again, distinct=distinct, example_ids=ids,
                              labelers=labelers)
    return mlp_left_out(result.task, split.X, split.y, split.X_targets, split.y_targets, groups,
                        seed=config.seed, runs=config.left_out_runs, relabel=again, distinct=distinct,
                        example_ids=ids, labelers=labelers)


def value_method(config: TrainingConfig) -> str:
    """How example scores for pay are measured: `trak` or `inrun` (see `TrainingConfig.value`)."""
    if config.value not in ("auto", "trak", "inrun"):
        raise dg.Failure(f"value {config.value!r} is unknown; use auto, trak or inrun")
    return "trak" if config.value == "auto" else config.value


# Replayed on another platform (torch build, CPU), float32 training may round differently: scores are
# then accepted within this fraction of the largest |score| (recorded with the run), or within the wider
# spread the auditor's own two replays show (`replay.Band`, where training amplifies the rounding).
SCORE_RTOL = 1e-4


# Each output asset is named as the training record names it (provenance.activities).
@dg.multi_asset(
    partitions_def=dataset_versions,
    group_name="training",
    outs={
        TrainingRecord.MODEL: dg.AssetOut(
            kinds={"pytorch", "ipfs"}, description="Model weights as deterministic safetensors bytes."
        ),
        TrainingRecord.ENCODING: dg.AssetOut(
            kinds={"json"}, description="How rows become model inputs (columns, scale, classes)."
        ),
        TrainingRecord.EXAMPLE_ATTRIBUTION: dg.AssetOut(
            kinds={"arrow"},
            description="Per-example scores pay is split by: TRAK value at the run's checkpoints (or the "
            "per-step in-run scores with value: inrun), method named per row.",
        ),
        TrainingRecord.FEATURES: dg.AssetOut(
            kinds={"ipfs"}, description="Projected checkpoint gradients: attribute any new prediction."
        ),
    },
)
def trained_model(
    context: dg.AssetExecutionContext,
    config: TrainingConfig,
    labeled_dataset: pa.Table,
    catalog: DatasetCatalog,
    store: StoreResource,
    index: AssetIndex,
    lineage: LineageResource,
):
    """Train the run's recipe on the labeled dataset with attribution, and record it: model, encoding,
    per-example scores and features, plus the left-out values of the providers (and labelers) retrained
    without."""
    started, version, config = now(), context.partition_key, config.on_device()
    client = store.client()
    data_cid = index.cid_of("labeled_dataset", version)
    inputs = {TrainingRecord.LABELED_DATASET: data_cid}
    field = catalog.payload_field(version)
    try:
        validation = catalog.validation(version, labeled_dataset, client)
        if validation is not None:
            inputs[TrainingRecord.VALIDATION] = store_value(client, validation).cid
        local = stored_local_model(client, config) if config.recipe == HF_RECIPE else None
        if local is not None:
            inputs[TrainingRecord.BASE_MODEL] = local.files
        run_id = run_id_of(data_cid, config, local.files if local else None)
        credit_cid = lineage.credit_cid(client, version)
        credit = read_parquet(client.get(credit_cid)) if credit_cid else None
        with pinned_threads():  # as replay retrains: the count set explicitly, MKL's fixed with it
            split, result = train_labeled(
                labeled_dataset, config, run_id=run_id, validation=validation, field=field, local=local
            )
            outputs = trained_outputs(split, result, config)
            values = left_out_value(split, labeled_dataset, result, config, credit,
                                    recount(client, lineage.cid_of(CONSENSUS, version)))
        if values is not None:
            outputs[TrainingRecord.LEFT_OUT_VALUE] = values
    except (AttributionError, DatasetError, StorageError) as exc:
        raise dg.Failure(str(exc)) from exc
    targets = "validation" if validation is not None else "crowd_hash_split"
    ignored = split.encoding.left_out(labeled_dataset) if isinstance(split, EncodedSplit) else []
    if ignored:
        context.log.warning(f"columns {ignored} are not numbers, fixed-length number lists or categories "
                            f"(at most {MAX_CATEGORIES} distinct strings), so the model never sees them: "
                            "encode them as numbers before ingest if they matter")
    if validation is None:
        context.log.warning(
            "no validation set declared: influence is measured against a hash split of the crowd-labeled "
            "examples (declare one with `caravan ingest ... --validation FILE`)"
        )
    if values is None:
        context.log.warning(
            f"more providers than left_out_max ({config.left_out_max}): providers are paid by their "
            "examples' summed scores, not by retraining without each"
        )
    elif config.left_out_labelers and "labeler" not in values["role"].to_pylist():
        context.log.warning(
            f"left_out_labelers: no labeler was retrained (more labelers than left_out_max, "
            f"{config.left_out_max}, or a consensus record that names no answers): labelers are paid by "
            "what their answers moved"
        )
    accuracy, loss, prior = heldout_fit(split, result)
    context.log.info(f"run {result.run_id}: {len(split.example_ids)} examples, held-out accuracy "
                     f"{accuracy:.3f}, target loss {loss:.4f}")
    if loss > prior:
        context.log.warning(
            f"the model predicts its targets worse than the training labels' frequencies do (target loss "
            f"{loss:.4f} against {prior:.4f}): it has overfit, and its example scores and left-out values "
            "measure noise more than data; set patience (stop at the best epoch) or train fewer epochs"
        )
    stored = {name: store_value(client, value) for name, value in outputs.items()}
    payload = payload_params(split, field)
    stats = split.stats if isinstance(split, PayloadSplit) else None
    if stats is not None and (stats.truncated or stats.resized or stats.converted):
        context.log.warning(f"recorded input policies applied: {stats.to_params()}")
    record = lineage.write(
        client,
        TRAINING,
        version,
        started=started,
        inputs=inputs,
        outputs={name: value.cid for name, value in stored.items()},
        parents=(lineage.cid_of(CONSENSUS, version), lineage.cid_of(SNAPSHOT, version)),
        params={
            "run_id": result.run_id,
            "seed": config.seed,
            "config": config.recorded(),
            "field": field,
            "epochs_trained": result.epochs,  # the best epoch's count where the run stopped early
            "heldout_accuracy": round(accuracy, 6),
            "target_loss": round(loss, 6),
            "prior_loss": round(prior, 6),  # the training labels' frequencies, as a model: a floor to beat
            "targets": targets,
            "platform": training_platform(config.device),
            "score_rtol": SCORE_RTOL,
            "digests": training_digests(split, result, config),
            **payload,
        },
    )
    yield from training_outputs(stored, split, result, values, record=record, accuracy=accuracy,
                                targets=targets, loss=(loss, prior))


def payload_params(split: EncodedSplit | PayloadSplit, field: str | None) -> dict[str, Any]:
    """A text or image run's recorded input handling (its kind, field, recipe and what the input
    policies did); nothing for numeric features."""
    if not isinstance(split, PayloadSplit):
        return {}
    return {"payload": {"kind": split.encoding.kind, "field": field, "recipe": split.task.name,
                        **split.stats.to_params()}}


def training_outputs(
    stored: dict[str, StoredValue],
    split: EncodedSplit | PayloadSplit,
    result: TrainResult,
    values: pa.Table | None,
    *,
    record: str,
    accuracy: float,
    targets: str,
    loss: tuple[float, float],
) -> Iterator[dg.Output]:
    """The training stage's four outputs (each already stored: the IO manager writes the pointer), with
    the metadata the Dagster UI shows."""
    scores = result.example_attribution
    yield dg.Output(
        stored[TrainingRecord.MODEL],
        output_name=TrainingRecord.MODEL,
        metadata={
            "run_id": result.run_id,
            "record_cid": record,
            "train_examples": len(split.example_ids),
            "targets": len(split.target_ids),
            "heldout_accuracy": float(accuracy),
            "target_loss": loss[0],
            "prior_loss": loss[1],
            "measured_against": targets,
            "train_s": float(result.timings.get("train_s", 0.0)),
            "epochs_trained": result.epochs,
        },
    )
    yield dg.Output(
        stored[TrainingRecord.ENCODING],
        output_name=TrainingRecord.ENCODING,
        metadata={"classes": list(split.encoding.classes)},
    )
    yield dg.Output(
        stored[TrainingRecord.FEATURES],
        output_name=TrainingRecord.FEATURES,
        metadata={"bytes": stored[TrainingRecord.FEATURES].size, "k": result.task.config.trak_k},
    )
    yield dg.Output(
        stored[TrainingRecord.EXAMPLE_ATTRIBUTION],
        output_name=TrainingRecord.EXAMPLE_ATTRIBUTION,
        metadata={
            "run_id": result.run_id,
            "dagster/row_count": scores.num_rows,
            "positive": int(pc.sum(pc.greater(scores["score"], 0)).as_py() or 0),
            "influence": dg.MetadataValue.md(
                histogram_md(scores["score"].to_numpy(), f"{result.method} per example")
            ),
            **({"left_out_value": dg.MetadataValue.md(left_out_value_md(values))} if values is not None
               else {}),
        },
    )


def left_out_value_md(values: pa.Table) -> str:
    """The left-out table as Markdown: what each provider's data and each labeler's answers did to the
    target loss (a labeler's rows: those relabeled or left unlabeled without its answers)."""
    rows = sorted(values.to_pylist(), key=lambda r: (r["role"] != "provider", -r["value"], r["contributor"]))
    return md_table(
        ["contributor", "role", "examples left out or relabeled", "target loss without",
         "value (> 0: helped)", "its copies' value (counted if < 0)"],
        [(r["contributor"], r["role"], r["examples_left_out"], f"{r['loss_without']:.5f}",
          f"{r['value']:+.5f}", f"{r['copies_value']:+.5f}") for r in rows],
    )


def trained_outputs(
    split: EncodedSplit | PayloadSplit, result: TrainResult, config: TrainingConfig
) -> dict[str, bytes | pa.Table]:
    """What the training record names as outputs: model, encoding, scores and TRAK features."""
    if isinstance(split, PayloadSplit):
        features = result.features if isinstance(result.features, ModelTrakFeatures) else model_features(
            split.task, result.checkpoints, split.train, seed=config.seed
        )
        return {
            TrainingRecord.MODEL: task_model_to_bytes(result.model, split.task),
            TrainingRecord.ENCODING: encoding_json(split),
            TrainingRecord.EXAMPLE_ATTRIBUTION: result.example_attribution,
            TrainingRecord.FEATURES: model_features_to_bytes(features),
        }
    return {
        TrainingRecord.MODEL: model_to_bytes(result.model, result.task.spec),
        TrainingRecord.ENCODING: encoding_json(split),
        TrainingRecord.EXAMPLE_ATTRIBUTION: result.example_attribution,
        TrainingRecord.FEATURES: features_to_bytes(result.features),
    }


def encoding_json(split: EncodedSplit | PayloadSplit) -> bytes:
    """How the run's rows become model inputs, as the record stores it and serving encodes each request by
    (canonical JSON: a numeric table's columns and scale, a text run's tokenizer, an image run's policy)."""
    if isinstance(split, PayloadSplit):
        return payload_encoding_to_json(split.encoding)
    return split.encoding.to_json()


def heldout_fit(split: EncodedSplit | PayloadSplit, result: TrainResult) -> tuple[float, float, float]:
    """The trained model on the targets, in eval mode (no dropout: the record's figures repeat): (accuracy,
    mean cross-entropy, the cross-entropy of predicting every target by the training labels' frequencies,
    each class counted once more so none is zero). Reported; pay never depends on them."""
    import torch
    import torch.nn.functional as F

    was_training = result.model.training
    result.model.eval()
    with torch.no_grad():
        if isinstance(split, PayloadSplit):
            logits, labels = model_logits(result.model, split.targets), split.targets[LABELS]
            trained = split.train[LABELS].numpy()
        else:
            logits = result.model(torch.as_tensor(split.X_targets, dtype=torch.float32))
            labels, trained = torch.as_tensor(split.y_targets, dtype=torch.int64), split.y
        logits = logits.double()
        loss = float(F.cross_entropy(logits, labels))
    result.model.train(was_training)
    counts = np.bincount(trained, minlength=logits.shape[1]) + 1.0
    prior = float(-np.log(counts / counts.sum())[labels.numpy()].mean())
    return float((logits.argmax(1) == labels).double().mean()), loss, prior
