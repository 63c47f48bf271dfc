"""An hf-local run's starting model, fetched from the content store by the CIDs its records name.

Such a run trained from a local Hugging Face directory, but its records and its stored encoding carry
only CIDs: the directory's file table (config, weights, tokenizer files) and its tokenizer JSON. The
files come back here, each verified by its CID, into a private temporary folder that lives as long as
the returned `LocalModel`; nothing is downloaded from anywhere else.
"""

from __future__ import annotations

import shutil
import tempfile
import weakref
from pathlib import Path

from attribution import HF_TOKENIZER_FILE, HfTextEncoding, InputEncoding, LocalModel, PayloadEncoding
from storage import ContentStore, get_folder


def fetch_local_model(store: ContentStore, files_cid: str) -> LocalModel:
    """The model directory named by ``files_cid`` (a file table), written to a temporary folder."""
    folder = Path(tempfile.mkdtemp(prefix="caravan-model-"))
    try:
        table = get_folder(store, files_cid, folder)
        local = LocalModel(folder, files_cid, table.cid_of(HF_TOKENIZER_FILE))
    except BaseException:
        shutil.rmtree(folder, ignore_errors=True)
        raise
    weakref.finalize(local, shutil.rmtree, folder, ignore_errors=True)
    return local


def with_model_files(store: ContentStore, encoding: InputEncoding | PayloadEncoding
                     ) -> InputEncoding | PayloadEncoding:
    """``encoding`` ready to build its model and read inputs: an hf-local encoding with its model's
    files fetched (and checked against the tokenizer CID it names); any other unchanged."""
    if isinstance(encoding, HfTextEncoding) and encoding.local is None:
        return encoding.at(fetch_local_model(store, encoding.files))
    return encoding
