"""Model control: vetting before load, repository modes none|poll|explicit, zero-downtime swaps.

Runs inside each Gunicorn worker, beside that worker's `ModelRegistry`:

- Every model file is vetted before onnxruntime sees it in a serving process: the static checks
  of `serve.lifecycle.checks`, then one `serve.lifecycle.load_probe` child per file version (shared
  by the workers through the server's runtime folder), so a crash or memory bomb is reported, not
  inherited.
- `poll` rescans the repository every `poll_interval` seconds; `explicit` changes models only on
  admin requests (`load`/`unload`), which every worker applies (a request file in the runtime
  folder carries them to the other workers); `none` loads once at start.
- A new version loads and warms up beside the serving one, then takes over by one reference
  assignment (`model.versions`); the old one is closed once the requests that resolved it are
  answered (at most `retire_timeout_s` later), so nothing queued or running on it is lost. A
  version that fails to load leaves the previous one serving and is shown, with its reason, as an
  UNAVAILABLE version of the model.
- A version folder is loaded by `poll` only once its files are unchanged across two scans, so a
  half-copied model is never loaded.
"""

from __future__ import annotations

import contextlib
import fcntl
import json
import logging
import os
import threading
import time
from collections.abc import Iterable
from dataclasses import dataclass, field
from pathlib import Path

from serve.lifecycle.checks import CheckLimits, ModelRejected, check_model_file
from serve.lifecycle.config import ENSEMBLE, ConfigError, ModelConfig, load_config
from serve.lifecycle.load_probe import DEFAULT_MEMORY_LIMIT_BYTES, DEFAULT_TIMEOUT_S, probe_once
from serve.lifecycle.names import is_valid_model_name, validate_model_name
from serve.lifecycle.registry import Model, ModelNotFound, ModelRegistry, ModelVersion, State
from serve.lifecycle.repository import available_versions, missing_versions_error, select_versions
from serve.observability import metrics
from serve.settings import CONTROL_MODES, Settings

log = logging.getLogger("tapeserve.control")

#: Folder the Gunicorn master creates for its workers to share (serve/workers/gunicorn_conf.py).
RUNTIME_DIR_ENV = "TAPESERVE_RUNTIME_DIR"
_REQUESTS_FILE = "explicit-requests.json"
_MAX_FINGERPRINT_FILES = 10_000


@dataclass(frozen=True)
class ControlSettings:
    """How models enter this server."""

    mode: str = "none"
    poll_interval: float = 5.0
    limits: CheckLimits = field(default_factory=CheckLimits)
    probe: bool = True
    probe_memory_bytes: int = DEFAULT_MEMORY_LIMIT_BYTES
    probe_timeout_s: float = DEFAULT_TIMEOUT_S
    #: Folder shared by the workers of one server (probe verdicts, explicit requests), or None.
    runtime_dir: str | None = None
    #: Bound on the wait for a swapped-out version's last requests before it is closed anyway.
    retire_timeout_s: float = 60.0

    def __post_init__(self) -> None:
        if self.mode not in CONTROL_MODES:
            raise ValueError(
                f"model control mode must be one of {', '.join(CONTROL_MODES)}, got {self.mode!r}"
            )
        if self.poll_interval <= 0:
            raise ValueError(f"poll interval must be positive, got {self.poll_interval}")

    @classmethod
    def from_settings(cls, settings: Settings) -> ControlSettings:
        """From the server settings; the runtime folder comes from the Gunicorn master."""
        domains = settings.allowed_custom_op_domains.split(",")
        return cls(
            mode=settings.model_control_mode,
            poll_interval=float(settings.poll_interval),
            limits=CheckLimits(
                allowed_custom_op_domains=frozenset(d.strip() for d in domains if d.strip())
            ),
            probe=settings.load_probe,
            probe_memory_bytes=int(settings.load_probe_memory_mb) * 1024**2,
            probe_timeout_s=float(settings.load_probe_timeout),
            runtime_dir=os.environ.get(RUNTIME_DIR_ENV) or None,
        )


def vet_model(path: Path, settings: ControlSettings) -> None:
    """Static checks, then the load probe; raises ModelRejected with the reason."""
    check_model_file(path, limits=settings.limits)
    if settings.probe:
        result = probe_once(
            path, settings.runtime_dir, settings.probe_memory_bytes, settings.probe_timeout_s
        )
        if not result.ok:
            raise ModelRejected(f"load probe: {result.reason}")
        if result.warning:
            log.warning("load probe of %s: %s; accepted anyway", path, result.warning)


def version_fingerprint(folder: Path) -> tuple:
    """Names, sizes and mtimes of every file under a version folder: changes while it is written."""
    entries = []
    for dirpath, _dirs, files in os.walk(folder):
        for name in files:
            full = os.path.join(dirpath, name)
            try:
                st = os.stat(full)
            except OSError:
                continue  # vanished or a dangling link: the checks report it if it matters
            entries.append((os.path.relpath(full, folder), st.st_size, st.st_mtime_ns))
            if len(entries) > _MAX_FINGERPRINT_FILES:
                break
    return tuple(sorted(entries))


def _config_fingerprint(model_dir: Path) -> tuple:
    try:
        st = os.stat(model_dir / "config.json")
    except OSError:
        return ()
    return (st.st_size, st.st_mtime_ns)


class ModelController:
    """Applies repository changes (poll) or admin requests (explicit) to one worker's registry."""

    def __init__(self, registry: ModelRegistry, settings: ControlSettings) -> None:
        self.registry = registry
        self.settings = settings
        self._lock = threading.RLock()  # one change at a time in this worker
        self._loaded_fp: dict[tuple[str, int], tuple] = {}
        self._sightings: dict[tuple[str, int], tuple] = {}
        self._config_fp: dict[str, tuple] = {}
        self._config_errors: dict[str, str] = {}
        #: What the steps of each failed ensemble version were when it failed: a scan tries it
        #: again once they change (a step appeared or was reloaded), its own files unchanged.
        self._failed_steps: dict[tuple[str, int], tuple] = {}
        self._applied: dict[str, int] = {}
        self._stop = threading.Event()
        self._adopted = False
        self._thread: threading.Thread | None = None
        #: Models an admin unloaded before this worker started (a replacement worker): never
        #: served here, removed once the start-up load is done.
        self._unloaded = set()
        if settings.mode == "explicit" and settings.runtime_dir:
            requests = _read_requests(Path(settings.runtime_dir) / _REQUESTS_FILE)
            self._unloaded = {n for n, r in requests.items() if r.get("action") == "unload"}

    def vet(self, path: Path) -> None:
        """The registry's check before any session: unloaded models, then `vet_model`."""
        name = path.parent.parent.name
        if name in self._unloaded:
            raise ModelRejected(f"model {name!r} was unloaded through the admin API")
        vet_model(path, self.settings)

    # -- lifecycle ---------------------------------------------------------------------------

    def start(self) -> None:
        """Watch the repository (poll) or the request file (explicit) in a daemon thread."""
        if self.settings.mode == "none":
            return
        self._thread = threading.Thread(target=self._watch, name="model-control", daemon=True)
        self._thread.start()

    def stop(self) -> None:
        self._stop.set()

    def _watch(self) -> None:
        self.registry.wait_loaded()
        self._adopt_initial()
        while not self._stop.wait(self.settings.poll_interval):
            try:
                if self.settings.mode == "poll":
                    self.poll_once()
                else:
                    self._apply_requests()
            except Exception:  # the watcher must outlive any one bad scan
                log.exception("model control: scan failed")

    def _adopt_initial(self) -> None:
        """Remember the files of what the registry loaded at start, to notice changes later."""
        with self._lock:
            if self._adopted:
                return
            self._adopted = True
            for model in self.registry.models.values():
                self._config_fp[model.name] = _config_fingerprint(
                    self.registry.repository / model.name
                )
                for mv in model.versions.values():
                    self._loaded_fp[(model.name, mv.version)] = version_fingerprint(mv.path.parent)
                    self._note_failed_steps(mv)

    # -- poll --------------------------------------------------------------------------------

    def poll_once(self) -> None:
        """One rescan: load new or changed versions that have settled, unload removed models."""
        self._adopt_initial()
        with self._lock:
            root = self.registry.repository
            present = set()
            with contextlib.suppress(OSError):
                present = {
                    p.name for p in root.iterdir() if p.is_dir() and is_valid_model_name(p.name)
                }
            for name in sorted(present, key=lambda n: (_is_ensemble(root / n), n)):
                self._sync_model(name, settle=True)  # ensembles after the models they run
            for name in sorted(set(self.registry.models) - present):
                self._remove(name)

    # -- explicit ----------------------------------------------------------------------------

    def load(self, name: str) -> Model:
        """(Re)load a model from the repository now, in this worker and, through the request
        file, in the others. Raises ModelNotFound when the repository has no such model."""
        validate_model_name(name)
        with self._lock:
            seq = self._publish(name, "load")
            model = self._sync_model(name, settle=False, reload_failed=True)
            self._applied[name] = seq
            if model is None:
                raise ModelNotFound(f"model {name!r} is not in the model repository")
            return model

    def unload(self, name: str) -> None:
        """Unload a model in every worker; its in-flight and queued requests still finish."""
        validate_model_name(name)
        with self._lock:
            if name not in self.registry.models:
                raise ModelNotFound(f"model {name!r} is not loaded")
            self._applied[name] = self._publish(name, "unload")
            self._remove(name)

    def _publish(self, name: str, action: str) -> int:
        """Record an explicit request for the other workers; return its sequence number."""
        folder = self.settings.runtime_dir
        if not folder:
            return self._applied.get(name, 0) + 1
        path = Path(folder) / _REQUESTS_FILE
        with open(Path(folder) / (_REQUESTS_FILE + ".lock"), "w") as lock:
            fcntl.flock(lock, fcntl.LOCK_EX)
            requests = _read_requests(path)
            seq = requests.get(name, {}).get("seq", 0) + 1
            requests[name] = {"action": action, "seq": seq}
            tmp = path.with_suffix(f".tmp{os.getpid()}")
            tmp.write_text(json.dumps(requests))
            os.replace(tmp, path)
        return seq

    def _apply_requests(self) -> None:
        folder = self.settings.runtime_dir
        if not folder:
            return
        for name, req in sorted(_read_requests(Path(folder) / _REQUESTS_FILE).items()):
            if req.get("seq", 0) <= self._applied.get(name, 0) or not is_valid_model_name(name):
                continue
            with self._lock:
                if req["action"] == "unload":
                    self._remove(name)
                else:
                    self._sync_model(name, settle=False, reload_failed=True)
                self._applied[name] = req["seq"]

    # -- the swap ----------------------------------------------------------------------------

    def _sync_model(self, name: str, settle: bool, reload_failed: bool = False) -> Model | None:
        """Bring one model in line with its folder; return it (None if the folder is gone)."""
        self._unloaded.discard(name)
        model_dir = self.registry.repository / name
        current_model = self.registry.models.get(name)
        current = dict(current_model.versions) if current_model else {}
        if not model_dir.is_dir():
            self._remove(name)
            return None
        try:
            config = load_config(model_dir)
            available = available_versions(model_dir, config.kind)
            if not available and current_model is None:
                return None  # not a model (yet): e.g. its first upload is still staging
            if not available:
                raise missing_versions_error(model_dir, config.kind)
            wanted = select_versions(available, config.version_policy)
        except (ConfigError, OSError) as exc:
            return self._config_failed(name, current_model, str(exc))
        self._config_errors.pop(name, None)
        config_fp = _config_fingerprint(model_dir)
        config_changed = current_model is not None and self._config_fp.get(name) != config_fp
        if config_changed and settle and not self._settled((name, 0), config_fp):
            config, config_changed = current_model.config, False  # still being written
        else:
            self._config_fp[name] = config_fp

        candidates: dict[int, ModelVersion] = {}
        for version, path in sorted(wanted.items()):
            key = (name, version)
            fp = version_fingerprint(path.parent)
            old = current.get(version)
            files_changed = self._loaded_fp.get(key) != fp
            keep = old is not None and not files_changed and not config_changed
            if keep and old.state is not State.READY and self._steps_changed(old):
                keep = False  # an ensemble whose steps were missing: they may be there now
            if keep and (old.state is State.READY or not reload_failed):
                candidates[version] = old
                continue
            if settle and files_changed and not self._settled(key, fp):
                if old is not None:
                    candidates[version] = old
                continue
            candidates[version] = self._load_version(name, version, path, config)
            self._loaded_fp[key] = fp

        if any(mv.state is State.READY for mv in candidates.values()):
            new = candidates
        else:  # nothing wanted is ready: the serving versions stay, failures shown beside them
            new = {v: mv for v, mv in current.items() if mv.state is State.READY}
            new.update(candidates)
        new = dict(sorted(new.items()))
        if current_model is not None and _same(new, current) and not config_changed:
            return current_model
        model = Model(name, config, None, new)
        self.registry.models = {**self.registry.models, name: model}  # the atomic swap
        retired = [mv for v, mv in current.items() if new.get(v) is not mv]
        self._retire(retired)
        if retired or len(new) != len(current):
            log.info(
                "model %s now serves version(s) %s (retired %s)",
                name,
                [v for v, mv in new.items() if mv.state is State.READY],
                [mv.version for mv in retired] or "none",
            )
        return model

    def _load_version(
        self, name: str, version: int, path: Path, config: ModelConfig
    ) -> ModelVersion:
        mv = ModelVersion(name, version, path, config, update=True)
        self.registry._load(mv)  # vets, creates sessions, warms up; counts a failure
        self._note_failed_steps(mv)
        return mv

    def _steps(self, config: ModelConfig) -> tuple:
        """The versions an ensemble's step models serve now (each version object, so a reload
        of a step counts as a change)."""
        names = sorted({s["model_name"] for s in config.ensemble_scheduling["step"]})  # type: ignore[index]
        models = self.registry.models
        return tuple(
            (n, tuple(id(mv) for mv in models[n].versions.values() if mv.state is State.READY))
            if n in models
            else (n, ())
            for n in names
        )

    def _note_failed_steps(self, mv: ModelVersion) -> None:
        key = (mv.name, mv.version)
        if mv.config.kind == ENSEMBLE and mv.state is State.UNAVAILABLE:
            self._failed_steps[key] = self._steps(mv.config)
        else:
            self._failed_steps.pop(key, None)

    def _steps_changed(self, mv: ModelVersion) -> bool:
        """A failed ensemble version whose step models changed since it failed."""
        seen = self._failed_steps.get((mv.name, mv.version))
        return seen is not None and seen != self._steps(mv.config)

    def _config_failed(self, name: str, model: Model | None, reason: str) -> Model | None:
        """A bad config.json: a new model is unavailable; a serving one keeps its versions.

        Reported (log, failure count) once per distinct reason, not at every scan."""
        if self._config_errors.get(name) != reason:
            self._config_errors[name] = reason
            log.error("model %s: %s", name, reason)
            if model is None or not model.error:
                metrics.MODEL_LOAD_FAILURES.labels(name).inc()
        if model is None:
            model = Model(name, ModelConfig(), reason, {})
            self.registry.models = {**self.registry.models, name: model}
        return model

    def _settled(self, key: tuple[str, int], fp: tuple) -> bool:
        """True when `fp` was seen for `key` at the previous scan: its files stopped changing."""
        if self._sightings.get(key) == fp:
            return True
        self._sightings[key] = fp
        return False

    def _remove(self, name: str) -> None:
        model = self.registry.models.get(name)
        if model is None:
            return
        self.registry.models = {k: m for k, m in self.registry.models.items() if k != name}
        self._retire(model.versions.values())
        for key in [k for k in self._loaded_fp if k[0] == name]:
            del self._loaded_fp[key]
        for key in [k for k in self._failed_steps if k[0] == name]:
            del self._failed_steps[key]
        self._config_fp.pop(name, None)
        log.info("model %s unloaded", name)

    def _retire(self, versions: Iterable[ModelVersion]) -> None:
        """Close swapped-out versions in the background once their requests are answered."""
        serving = [mv for mv in versions if mv.batcher is not None]
        if serving:
            threading.Thread(
                target=close_when_idle,
                args=(serving, self.settings.retire_timeout_s),
                name="retire-" + "-".join(f"{mv.name}.{mv.version}" for mv in serving),
                daemon=True,
            ).start()


def close_when_idle(versions: list[ModelVersion], timeout_s: float) -> None:
    """Retire each version, wait (within one `timeout_s` for all) for its holders, close it.

    Requests that resolved a version before the swap finish on it: they hold it from lookup to
    answer (serve.http.views.common.resolve), and one that looks it up after `retire` looks again
    and gets the new version. Past the bound it is closed anyway and the stragglers are logged.
    """
    deadline = time.monotonic() + timeout_s
    for mv in versions:
        if not mv.retire(max(0.0, deadline - time.monotonic())):
            log.warning(
                "model %s version %s: %d request(s) still running %g s after it was retired; "
                "closing it anyway",
                mv.name,
                mv.version,
                mv.users,
                timeout_s,
            )
        mv.batcher.close()  # type: ignore[union-attr]  (queued work still drains)


def _is_ensemble(model_dir: Path) -> bool:
    try:
        return load_config(model_dir).kind == ENSEMBLE
    except (ConfigError, OSError):
        return False


def _same(a: dict[int, ModelVersion], b: dict[int, ModelVersion]) -> bool:
    return a.keys() == b.keys() and all(a[k] is b[k] for k in a)


def _read_requests(path: Path) -> dict[str, dict]:
    try:
        data = json.loads(path.read_text())
    except (OSError, ValueError):
        return {}
    return data if isinstance(data, dict) else {}
