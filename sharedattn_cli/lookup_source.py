"""Where SharePrefill's lookup comes from: --lookup, the one shipped for the bundled model, or one
built once from the bundled prompts and cached per model."""
from __future__ import annotations

import hashlib
import json
from pathlib import Path
from typing import Optional

from .common import UserError, err_console

CALIBRATION_PROMPTS = ("stdlib-prose", "stdlib-code", "stdlib-mixed", "licenses")
CALIBRATION_TOKENS = 2048


def shipped_lookup_path(model_id: str) -> Optional[Path]:
    from importlib.resources import files

    path = Path(str(files("sharedattn.analysis") / "lookups" / f"{model_id}.json"))
    return path if path.is_file() else None


def _cache_path(loaded) -> Path:
    from sharedattn.analysis.hf.models import cache_root

    key = hashlib.sha256(json.dumps({**loaded.fingerprint.to_json(), "source": loaded.source},
                                    sort_keys=True).encode()).hexdigest()[:20]
    return cache_root() / "lookups" / f"{key}.json"


def _load_checked(path: Path, loaded):
    """The lookup at ``path``, refused (``FormatError``) when it was made for another model: other
    shapes, or other local (sliding-window) layers."""
    from sharedattn.analysis.hf.models import layer_windows_of
    from sharedattn.analysis.offline.lookup import check_lookup_model, check_lookup_windows, load_lookup

    lookup = load_lookup(path)
    check_lookup_model(lookup, loaded.fingerprint, check_id=False)
    check_lookup_windows(lookup, layer_windows_of(loaded.model.config))
    return lookup


def _build(loaded, choice, path: Path):
    """Capture the bundled prompts, cluster with the defaults of `sharedattn cluster`, cache."""
    from sharedattn.analysis.offline.clustering import ClusterConfig
    from sharedattn.analysis.offline.lookup import lookup_from_records, save_lookup
    from sharedattn.analysis.offline.similarity import SimilarityConfig

    from .capturing import CaptureRequest, capture_records

    tokens = min(CALIBRATION_TOKENS, loaded.fingerprint.max_positions or CALIBRATION_TOKENS)
    results, _ = capture_records(CaptureRequest(choice, CALIBRATION_PROMPTS, tokens))
    records = [r for r, _ in results]
    lookup = lookup_from_records(records, SimilarityConfig(), ClusterConfig())
    path.parent.mkdir(parents=True, exist_ok=True)
    save_lookup(lookup, path)
    return lookup


def resolve_lookup(path: Optional[Path], loaded, choice):
    """Returns ``(lookup, description)``; a lookup for another model fails naming the field."""
    if path is not None:
        return _load_checked(path, loaded), f"lookup {path}"
    shipped = shipped_lookup_path(loaded.fingerprint.model_id) if loaded.realistic else None
    if shipped is not None:
        return _load_checked(shipped, loaded), f"the lookup shipped for {loaded.fingerprint.model_id} ({shipped})"
    cached = _cache_path(loaded)
    if cached.is_file():
        return _load_checked(cached, loaded), f"the cached lookup built for this model ({cached})"
    err_console.print("[yellow]note:[/] no lookup for this model yet: building one from the bundled "
                      f"prompts ({', '.join(CALIBRATION_PROMPTS)}, {CALIBRATION_TOKENS} tokens)")
    try:
        lookup = _build(loaded, choice, cached)
    except OSError as exc:
        raise UserError(f"cannot write the lookup cache {str(cached)!r} ({exc.strerror})") from None
    return lookup, f"a lookup built now from the bundled prompts and cached ({cached})"


def lookup_for(needed: bool, path: Optional[Path], loaded, choice):
    """``resolve_lookup`` when shareprefill runs (saying which lookup it uses), else ``(None, None)``."""
    if not needed:
        return None, None
    lookup, note = resolve_lookup(path, loaded, choice)
    err_console.print(f"[dim]shareprefill uses {note}[/]")
    return lookup, note
