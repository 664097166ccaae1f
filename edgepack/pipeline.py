"""``edgepack build``: one config -> pull -> convert -> (merge) -> quantize -> adapters -> eval/bench -> fit ->
bundle -> report, with every step cached by the content hash of its inputs and settings.

The step cache lives in ``<output>/.edgepack-cache/<step>/<key>/``: a step runs in a temp folder beside its
key folder, writes ``done.json`` (what it made) last, and the folder is renamed into place, so an interrupted
build leaves no half step and resumes where it stopped. A re-run with nothing changed finds every key done and
does no work; changing one quant type changes only that branch's keys.

The stages are called only through their public functions and ship in the same package: a stage that fails to
import (or any programming error in one) fails the build; it is never turned into a skipped step.

Units of work (``plan``): the shared prerequisites (source, convert, merges) and then one unit per variant
(quantize + eval + bench) and per adapter conversion. ``build(only=KEY)`` runs one unit, so CI can fan a build
out over runners; a final plain build finds every unit in the (shared) cache and writes fit, bundles, report.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import os
import shutil
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Callable

from . import __version__, cilog
from .config import AdapterSpec, BuildConfig
from .errors import BadCheckpoint, BadGGUF, EdgepackError, UsageError
from .fileio import atomic_write_text, folder_lock, prepare_output_dir, sha256_file, sweep_temp_files
from .progress import QUIET, Progress

CACHE_DIR = ".edgepack-cache"
DONE = "done.json"
STEP_VERSION = 1  # bump to invalidate every cached step (a change in what steps produce)
BASE_LINE = "base"


# --- the step cache ---------------------------------------------------------------------------------

def content_key(**parts: Any) -> str:
    """A short stable hash of JSON-able parts."""
    text = json.dumps(parts, sort_keys=True, default=str, separators=(",", ":"))
    return hashlib.sha256(text.encode()).hexdigest()[:20]


@dataclass
class StepRecord:
    step: str
    label: str
    key: str
    status: str  # "ran", "cached", "skipped"; "checked"/"computed" for the uncached source check and fit
    seconds: float = 0.0
    reason: str = ""


class StepCache:
    """Content-addressed step folders with a done-marker written last."""

    def __init__(self, root: Path):
        self.root = Path(root)

    def folder(self, step: str, key: str) -> Path:
        return self.root / step / key

    def get(self, step: str, key: str) -> dict | None:
        marker = self.folder(step, key) / DONE
        if not marker.is_file():
            return None
        try:
            return json.loads(marker.read_text(encoding="utf-8"))
        except (OSError, json.JSONDecodeError):
            return None  # a damaged marker: redo the step

    def run(self, step: str, key: str, fn: Callable[[Path], dict]) -> tuple[dict, bool]:
        """(result, ran): the cached result of (step, key), or run ``fn(tmp_folder)`` and commit it."""
        done = self.get(step, key)
        if done is not None:
            return done, False
        final = self.folder(step, key)
        final.parent.mkdir(parents=True, exist_ok=True)
        tmp = final.parent / f".{key}.tmp-{os.getpid()}"
        shutil.rmtree(tmp, ignore_errors=True)
        tmp.mkdir()
        try:
            result = fn(tmp)
            atomic_write_text(tmp / DONE, json.dumps(result, indent=2, sort_keys=True, default=str) + "\n")
            if final.exists():  # an incomplete folder from an older run (no marker): replace it
                shutil.rmtree(final)
            os.replace(tmp, final)
        except BaseException:
            shutil.rmtree(tmp, ignore_errors=True)
            raise
        return result, True

    def sweep(self) -> int:
        """Remove temp folders left by killed builds; returns how many."""
        n = 0
        if self.root.is_dir():
            for step in self.root.iterdir():
                for tmp in step.glob(".*.tmp-*") if step.is_dir() else ():
                    with contextlib.suppress(ValueError, OSError):
                        pid = int(tmp.name.rsplit("-", 1)[1])
                        if pid != os.getpid() and not _alive(pid):
                            shutil.rmtree(tmp, ignore_errors=True)
                            n += 1
        return n


class _HashMemo:
    """sha256 of files, memoised on (resolved path, size, mtime) in a JSON file in the cache: a re-run hashes
    only what changed."""

    def __init__(self, path: Path):
        self.path = path
        self._memo: dict[str, str] | None = None
        self._changed = False

    @property
    def memo(self) -> dict[str, str]:
        if self._memo is None:
            try:
                self._memo = json.loads(self.path.read_text())
            except (OSError, json.JSONDecodeError):
                self._memo = {}
        return self._memo

    @staticmethod
    def _tag(path: Path) -> str:
        st = path.stat()
        return f"{path.resolve()}|{st.st_size}|{st.st_mtime_ns}"

    def sha256(self, path: Path) -> str:
        tag = self._tag(path)
        if self.memo.get(tag) is None:
            self.record(path, sha256_file(path), tag)
        return self.memo[tag]

    def record(self, path: Path, sha256: str, tag: str | None = None) -> None:
        self.memo[tag or self._tag(path)] = sha256
        self._changed = True

    def save(self) -> None:
        if self._changed:
            self.path.parent.mkdir(parents=True, exist_ok=True)
            atomic_write_text(self.path, json.dumps(self.memo, indent=1, sort_keys=True))
            self._changed = False


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


# --- plan -------------------------------------------------------------------------------------------

@dataclass(frozen=True)
class Line:
    """A model line: the base, or the base with one adapter merged at one scale."""

    name: str
    adapter: AdapterSpec | None = None
    scale: float = 1.0


@dataclass(frozen=True)
class Unit:
    """One independent unit of work (a matrix entry)."""

    key: str
    kind: str  # "variant" | "adapter"
    line: str
    quant: str | None = None
    adapter: str | None = None


def lines(config: BuildConfig) -> list[Line]:
    out = [Line(BASE_LINE)]
    for a in config.adapters:
        if a.merges:
            out += [Line(f"{a.name}-x{_fmt_scale(s)}", a, s) for s in a.scales]
    return out


def _fmt_scale(s: float) -> str:
    return f"{s:g}"


def plan(config: BuildConfig) -> list[Unit]:
    """The independent units of a build, in build order."""
    units = []
    for line in lines(config):
        for q in config.quants:
            key = q.lower() if line.name == BASE_LINE else f"{line.name}-{q.lower()}"
            units.append(Unit(key=key, kind="variant", line=line.name, quant=q))
    for a in config.adapters:
        if a.converts:
            units.append(Unit(key=f"adapter-{a.name}", kind="adapter", line=BASE_LINE, adapter=a.name))
    return units


def matrix(config: BuildConfig) -> dict:
    """A GitHub Actions job matrix: ``{"include": [{"key": ..., ...}]}``."""
    return {"include": [{k: v for k, v in asdict(u).items() if v is not None} for u in plan(config)]}


# --- the build --------------------------------------------------------------------------------------

@dataclass
class BundleSummary:
    profile: str
    line: str
    variant: str | None
    folder: Path | None
    archive: Path | None = None
    reason: str = ""
    manifest_sha256: str | None = None  # pins the bundle: `edgepack verify --expect`


@dataclass
class BuildResult:
    output_dir: Path
    steps: list[StepRecord] = field(default_factory=list)
    variants: dict[str, dict] = field(default_factory=dict)  # variant name -> facts (file, quant, quality, bench)
    picks: dict[str, dict[str, str | None]] = field(default_factory=dict)  # line -> profile -> variant
    bundles: list[BundleSummary] = field(default_factory=list)
    report: Path | None = None
    failures: list[str] = field(default_factory=list)  # constraint failures (build --check)
    only: str | None = None
    seconds: float = 0.0

    @property
    def ran(self) -> list[StepRecord]:
        return [s for s in self.steps if s.status == "ran"]

    @property
    def skipped(self) -> list[StepRecord]:
        return [s for s in self.steps if s.status == "skipped"]

    @property
    def nothing_to_do(self) -> bool:
        return not self.ran


class _Build:
    def __init__(self, config: BuildConfig, progress: Progress, only: str | None):
        self.config = config
        self.progress = progress
        self.only = only
        self.out = Path(config.output_dir)
        self.cache = StepCache(self.out / CACHE_DIR)
        self.hashes = _HashMemo(self.cache.root / "source-hashes.json")
        self.result = BuildResult(output_dir=self.out, only=only)
        self.log: Callable[[str], None] = (lambda m: None) if not progress.enabled else cilog.line
        self._imatrices: dict[str, dict] = {}  # line base sha256 -> its imatrix step's facts

    # one step: cached or run, recorded either way
    def step(self, step: str, label: str, parts: dict, fn: Callable[[Path], dict]) -> tuple[dict, Path]:
        key = self._key(step, parts)
        started = time.monotonic()
        folder = self.cache.folder(step, key)
        cached = self.cache.get(step, key)
        if cached is not None and not self._intact(folder, cached):
            # A damaged cache entry must not be reused, let alone shipped: make it again.
            self.log(f"[{step}] {label}: the cached {cached['file']} changed since it was made; redoing the step")
            shutil.rmtree(folder)
            cached = None
        with cilog.group(f"[{step}] {label}", enabled=cached is None and self.progress.enabled):
            if cached is None:
                self.log(f"[{step}] {label} ...")
            result, ran = self.cache.run(step, key, fn)
            if ran and "file" in result and "sha256" in result:  # its hash is known: no re-hash on the next build
                self.hashes.record(folder / str(result["file"]), result["sha256"])
                self.hashes.save()
        seconds = round(time.monotonic() - started, 2)
        self.result.steps.append(StepRecord(step, label, key, "ran" if ran else "cached", seconds))
        if ran:
            self.log(f"[{step}] {label} done in {seconds:.1f}s")
        return result, folder

    def skip(self, step: str, label: str, reason: str) -> None:
        self.result.steps.append(StepRecord(step, label, "", "skipped", 0.0, reason))
        self.log(f"[{step}] {label} SKIPPED: {reason}")
        cilog.warning(f"[{step}] {label} SKIPPED: {reason}")

    # ------------------------------------------------------------------------------------------------
    def run(self) -> BuildResult:
        prepare_output_dir(self.out)
        with folder_lock(self.out, "build"):  # two builds into one folder would race on every step and bundle
            return self._run()

    def _run(self) -> BuildResult:
        started = time.monotonic()
        self.cache.sweep()
        for folder in (self.out / "bundles", self.out / "report"):  # left by a kill -9; safe under the lock
            for name in sweep_temp_files(folder):
                self.log(f"[build] removed {folder.name}/{name}, left by an interrupted build")
        units = {u.key: u for u in plan(self.config)}
        if self.only is not None and self.only not in units:
            raise UsageError(f"--only {self.only}: no such unit in this build",
                             f"`edgepack plan --matrix` lists them: {', '.join(units)}")
        src = self.source()
        base = self.convert_base(src)
        line_bases = {BASE_LINE: base}
        for line in lines(self.config)[1:]:
            if self.only is None or units[self.only].line == line.name:
                line_bases[line.name] = self.merge(src, line)
        for unit in units.values():
            if self.only is not None and unit.key != self.only:
                continue
            if unit.kind == "variant":
                if unit.line in line_bases:
                    self.variant(unit, line_bases[unit.line], src)
            else:
                self.adapter(unit, src, base)
        for line_name, line_base in line_bases.items():  # one reference pass per line for every missing eval
            self.evaluate_line([v for v in self._variants() if v["line"] == line_name], line_base)
        for v in self._variants():
            v["bench"] = self.bench(v["name"], v["file"], v["sha256"])
        if self.only is None:
            fit_data = self.fit()
            if fit_data is not None:
                self.bundles(fit_data, src)
                self.report(fit_data)
            self.check(fit_data)
            for failure in self.result.failures:
                cilog.warning(f"constraint failed: {failure}")
            cilog.job_summary(cilog.picks_markdown(
                self.config.name, fit_data["lines"] if fit_data else {}, BASE_LINE, self.result.failures,
                [f"[{s.step}] {s.label}: {s.reason}" for s in self.result.skipped]))
        self.result.seconds = round(time.monotonic() - started, 2)
        return self.result

    # ------------------------------------------------------------------------------------------------
    def source(self) -> dict:
        cfg = self.config
        started = time.monotonic()
        if cfg.source.kind == "hub":
            from . import hub

            folder, prov = hub.resolve_source(f"{cfg.source.repo_id}@{cfg.source.revision}" if cfg.source.revision
                                              else cfg.source.repo_id, progress=self.progress)
        else:
            folder = Path(cfg.source.path)
            if not folder.is_dir():
                raise BadCheckpoint(f"source folder {folder} does not exist",
                                    "set source in edgepack.toml to a model folder or org/repo@revision")
            from . import hub

            prov = hub.local_provenance(folder)
        hashes = self._hash_folder(folder)
        digest = hashlib.sha256(json.dumps(hashes, sort_keys=True).encode()).hexdigest()
        facts = {"kind": cfg.source.kind, "name": cfg.name, "sha256": digest}
        if cfg.source.kind == "local":
            facts["folder"] = folder.resolve().name
        if prov is not None:
            facts.update({k: v for k, v in asdict(prov).items() if v is not None})
        # Not a cached step: the Hub stage keeps its own cache; here the source is resolved and hashed.
        self.result.steps.append(StepRecord("pull", str(cfg.source), digest[:20], "checked",
                                            round(time.monotonic() - started, 2)))
        return {"folder": folder, "facts": facts, "sha256": digest, "provenance": prov}

    def _hash_folder(self, folder: Path) -> dict[str, str]:
        """sha256 of every file in the model folder (memoised, see ``_HashMemo``)."""
        out = {path.relative_to(folder).as_posix(): self.hashes.sha256(path)
               for path in sorted(p for p in folder.rglob("*") if p.is_file() and not any(
                   part.startswith(".") for part in p.relative_to(folder).parts))}
        self.hashes.save()
        return out

    def _intact(self, folder: Path, done: dict) -> bool:
        """Whether the file a cached step made still has the sha256 recorded when it was made. A file that was
        not touched costs nothing (the memo knows it by path, size and mtime); a changed one is hashed again."""
        if "file" not in done or "sha256" not in done:
            return True
        path = folder / str(done["file"])
        if not path.is_file():
            return False
        ok = self.hashes.sha256(path) == done["sha256"]
        self.hashes.save()
        return ok

    def convert_base(self, src: dict) -> dict:
        from .convert import convert

        outtype = self.config.outtype

        def work(tmp: Path) -> dict:
            out = tmp / f"{self.config.name}-{outtype.upper()}.gguf"
            res = convert(src["folder"], out, outtype=outtype, provenance=src["provenance"],
                          progress=self.progress)
            return {"file": out.name, "sha256": sha256_file(out), "outtype": res.outtype,
                    "n_params": res.n_params, "size_bytes": res.size_bytes}

        done, folder = self.step("convert", f"{self.config.name} -> GGUF {outtype}",
                                 {"source": src["sha256"], "outtype": outtype, "name": self.config.name}, work)
        return {**done, "path": folder / done["file"], "line": BASE_LINE}

    def merge(self, src: dict, line: Line) -> dict:
        from . import adapters
        from .convert import convert

        a = line.adapter
        adapter_sha = self._adapter_hash(a)

        def work(tmp: Path) -> dict:
            merged = tmp / "merged"
            adapters.merge_adapter(a.path, src["folder"], merged, scale=line.scale, progress=self.progress)
            out = tmp / f"{self.config.name}-{line.name}-{self.config.outtype.upper()}.gguf"
            res = convert(merged, out, outtype=self.config.outtype, provenance=src["provenance"],
                          progress=self.progress)
            shutil.rmtree(merged)
            return {"file": out.name, "sha256": sha256_file(out), "outtype": res.outtype}

        done, folder = self.step("merge", f"merge {a.name} x{_fmt_scale(line.scale)} -> GGUF",
                                 {"source": src["sha256"], "adapter": adapter_sha, "scale": line.scale,
                                  "outtype": self.config.outtype}, work)
        return {**done, "path": folder / done["file"], "line": line.name}

    def _adapter_hash(self, a: AdapterSpec) -> str:
        if not a.path.is_dir():
            raise BadCheckpoint(f"adapter folder {a.path} does not exist",
                                "fix [[adapters]] path in edgepack.toml")
        return hashlib.sha256(json.dumps(self._hash_folder(a.path), sort_keys=True).encode()).hexdigest()

    def variant(self, unit: Unit, base: dict, src: dict) -> None:
        cfg = self.config
        name = f"{cfg.name}-{unit.quant}" if unit.line == BASE_LINE else f"{cfg.name}-{unit.line}-{unit.quant}"
        facts: dict[str, Any] = {"name": name, "line": unit.line, "quant": unit.quant, "unit": unit.key}
        self.result.variants[name] = facts
        from . import quantize

        imat = self.imatrix(base)
        if imat:
            facts.update(imatrix=imat["file"], calibration_sha256=imat["calibration_sha256"])

        def work(tmp: Path) -> dict:
            [res] = quantize.quantize(base["path"], [unit.quant], out_dir=tmp, threads=cfg.threads,
                                      imatrix=imat["path"] if imat else None, progress=self.progress)
            out = tmp / f"{name}.gguf"
            os.replace(res.output, out)
            for stray in tmp.iterdir():  # the quantizer's own re-run sidecar: the step cache does that job
                if stray != out:
                    stray.unlink()
            return {"file": out.name, "sha256": sha256_file(out), "size_bytes": out.stat().st_size}

        done, folder = self.step("quantize", name, {"base": base["sha256"], "quant": unit.quant,
                                                    "imatrix": imat["sha256"] if imat else None,
                                                    "llama_cpp": llama_cpp_runtime()}, work)
        path = folder / done["file"]
        facts.update(file=path, sha256=done["sha256"], size_bytes=done["size_bytes"])

    def imatrix(self, base: dict) -> dict | None:
        """The importance matrix a line's variants are quantized with (``[quantize] imatrix``): None when off, the
        given file, or ("auto") one computed on the calibration text, cached per line base and text."""
        cfg = self.config
        if cfg.imatrix is None:
            return None
        if cfg.imatrix != "auto":
            from .imatrix import read

            path = Path(cfg.imatrix)
            return {"file": path.name, "path": path, "sha256": sha256_file(path),
                    "calibration_sha256": read(path).calibration_sha256}
        if base["sha256"] in self._imatrices:
            return self._imatrices[base["sha256"]]
        from .calibration import calibration
        from .imatrix import compute

        cal = calibration(cfg.calibration)
        line = base.get("line", BASE_LINE)
        name = f"{cfg.name}.imatrix.gguf" if line == BASE_LINE else f"{cfg.name}-{line}.imatrix.gguf"

        def work(tmp: Path) -> dict:
            res = compute(base["path"], cal, tmp / name, threads=cfg.threads, progress=self.progress)
            return {"file": name, "sha256": sha256_file(res.output), "calibration_sha256": res.calibration_sha256,
                    "chunks": res.chunks}

        done, folder = self.step("imatrix", name, {"base": base["sha256"], "calibration": cal.sha256}, work)
        self._imatrices[base["sha256"]] = {**done, "path": folder / done["file"]}
        return self._imatrices[base["sha256"]]

    def evaluate_line(self, variants: list[dict], base: dict) -> None:
        """Quality of each variant vs its line's unquantized GGUF (PPL, KLD, top-1), one step per variant.

        The variants whose step is not cached are measured together (``evaluate_many``: one reference pass);
        each result is then committed to its own step folder, so the cache stays one entry per branch.
        """
        if not variants:
            return
        from . import evaluate

        cfg = self.config
        text_path = cfg.eval_text
        # the built-in text by its content too: a new text in a new release must not reuse old measurements
        text_sha = sha256_file(text_path) if text_path else hashlib.sha256(
            evaluate.builtin_text().encode()).hexdigest()
        ctx = max(16, min(cfg.ctx, 512) // 2 * 2)
        parts = {v["name"]: {"model": v["sha256"], "ref": base["sha256"], "text": text_sha,
                             "tokens": cfg.eval_tokens, "ctx": ctx, "llama_cpp": llama_cpp_runtime()}
                 for v in variants}
        missing = [v for v in variants if self.cache.get("eval", self._key("eval", parts[v["name"]])) is None]
        measured: dict[str, dict] = {}
        started = time.monotonic()
        if missing:
            title = f"[eval] {', '.join(v['name'] for v in missing)} vs {Path(base['path']).name}"
            with cilog.group(title, enabled=self.progress.enabled), contextlib.ExitStack() as stack:
                self.log(f"{title} ...")
                text = None
                if text_path is not None:
                    tmp = Path(stack.enter_context(_tempdir()))
                    text = tmp / "eval.txt"
                    text.write_text(_head_tokens(text_path.read_text(encoding="utf-8"), cfg.eval_tokens),
                                    encoding="utf-8")
                results = evaluate.evaluate_many([v["file"] for v in missing], base["path"], text=text, ctx=ctx,
                                                 threads=cfg.threads)
            for v, r in zip(missing, results):
                data = {k: x for k, x in asdict(r).items() if k not in ("model", "reference", "text", "seconds")}
                measured[v["name"]] = {k: (round(x, 6) if isinstance(x, float) else x) for k, x in data.items()}
        share = round((time.monotonic() - started) / max(1, len(missing)), 2)
        for v in variants:
            v["quality"], _ = self.step("eval", v["name"], parts[v["name"]],
                                        lambda tmp, name=v["name"]: measured[name])
            if v["name"] in measured:  # the batch's time, shared out
                self.result.steps[-1].seconds = share

    def _key(self, step: str, parts: dict) -> str:
        return content_key(step=step, v=STEP_VERSION, edgepack=__version__, code=code_hash(), **parts)

    def bench(self, name: str, path: Path, sha: str) -> dict:
        from . import bench

        cfg = self.config
        n_prompt, n_gen = min(128, cfg.ctx // 2), min(32, cfg.ctx // 4)

        def work(tmp: Path) -> dict:
            m = bench.bench_one(path, n_ctx=cfg.ctx, n_prompt=n_prompt, n_gen=n_gen, reps=2, threads=cfg.threads)
            return {**asdict(m), "path": path.name, "pp_tokens_per_s": m.pp_tokens_per_s,
                    "tg_tokens_per_s": m.tg_tokens_per_s, "threads": cfg.threads, "host": _host_id()}

        done, _ = self.step("bench", name, {"model": sha, "ctx": cfg.ctx, "threads": cfg.threads,
                                            "host": _host_id(), "llama_cpp": llama_cpp_runtime()}, work)
        return done

    def adapter(self, unit: Unit, src: dict, base: dict) -> None:
        from . import adapters

        a = next(x for x in self.config.adapters if x.name == unit.adapter)
        adapter_sha = self._adapter_hash(a)

        def work(tmp: Path) -> dict:
            out = tmp / f"{a.name}.gguf"
            res = adapters.convert_adapter(a.path, src["folder"], out, progress=self.progress)
            return {"file": out.name, "sha256": sha256_file(out), "size_bytes": res.size_bytes,
                    "n_pairs": res.n_pairs}

        done, folder = self.step("adapter", f"LoRA {a.name} -> GGUF", {"adapter": adapter_sha,
                                                                       "source": src["sha256"]}, work)
        self.result.variants.setdefault("_adapters", {})[a.name] = {
            **done, "path": folder / done["file"], "scales": list(a.scales), "source_sha256": adapter_sha}

    # ------------------------------------------------------------------------------------------------
    def _variants(self) -> list[dict]:
        return [v for k, v in self.result.variants.items() if not k.startswith("_") and "file" in v]

    def fit(self) -> dict | None:
        from . import fit as fit_mod
        from . import profiles as profiles_mod

        variants = self._variants()
        if not variants:
            self.skip("fit", "all variants", "no quantized variant was built")
            return None
        cfg = self.config
        extra = [str(p) for p in cfg.profile_paths]
        available = profiles_mod.load_profiles(extra)
        names = list(cfg.profiles) or sorted(available)
        missing = [n for n in names if n not in available]
        if missing:
            raise UsageError(f"unknown device profile {missing[0]!r}",
                             "`edgepack profiles list` shows them: " + ", ".join(sorted(available)))
        profiles = [available[n] for n in names]
        out: dict[str, Any] = {"lines": {}}
        started = time.monotonic()
        for line in lines(cfg):
            vs = []
            for v in variants:
                if v["line"] != line.name:
                    continue
                desc = fit_mod.describe_gguf(v["file"])
                desc.name = v["name"]
                q = v.get("quality") or {}
                quality = fit_mod.Quality(kld=q.get("mean_kld"), ppl=q.get("ppl"), ppl_delta=q.get("delta_ppl"),
                                          top1=q.get("top1_agreement"))
                # No host calibration: the fit (and so the manifests) must not depend on timing noise.
                vs.append(fit_mod.Variant(desc, quality))
            if not vs:
                continue
            res = fit_mod.fit(vs, profiles, n_ctx=cfg.ctx, min_tps=cfg.min_tps, max_kld=cfg.max_kld)
            out["lines"][line.name] = res.to_dict()
            self.result.picks[line.name] = dict(res.picks)
        out["profiles"] = {p.name: {"name": p.name, "display_name": p.display_name, "kind": p.kind}
                           for p in profiles}
        self.result.steps.append(StepRecord("fit", f"{len(variants)} variants x {len(profiles)} profiles", "",
                                            "computed", round(time.monotonic() - started, 2)))
        return out

    def bundles(self, fit_data: dict, src: dict) -> None:
        from . import bundle as bundle_mod
        from . import report as report_mod

        cfg = self.config
        by_name = {v["name"]: v for v in self._variants()}
        converted = self.result.variants.get("_adapters", {})
        for line_name, res in fit_data["lines"].items():
            report_files = self.bundle_report(line_name, res, report_mod)
            for profile, pick in sorted(res["picks"].items()):
                folder_name = profile if line_name == BASE_LINE else f"{profile}+{line_name}"
                if pick is None:
                    self.result.bundles.append(BundleSummary(profile, line_name, None, None,
                                                             reason=res["summary"][profile]))
                    continue
                v = by_name[pick]
                row = next(r for r in res["rows"] if r["profile"] == profile and r["variant"] == pick)
                adapters = [] if line_name != BASE_LINE else [
                    bundle_mod.BundleAdapter(name=n, file=a["path"], scale=a["scales"][0], sha256=a["sha256"],
                                             source_sha256=a["source_sha256"]) for n, a in sorted(converted.items())]
                quality = {k: v["quality"][k] for k in ("mean_kld", "ppl", "ref_ppl", "delta_ppl", "top1_agreement")
                           } if v.get("quality") else {}
                fit_row = {k: row[k] for k in ("memory_total_mb", "usable_mb", "fits", "tg_tokens_per_s",
                                               "pp_tokens_per_s", "memory", "backend", "bits_per_weight", "size_mb")}
                runtime = dict(row["settings"])
                profile_facts = fit_data["profiles"][profile]
                parts = {"model": v["sha256"], "adapters": [(a.name, a.scale, str(a.source_sha256)) for a in adapters],
                         "adapter_files": [converted[a.name]["sha256"] for a in adapters], "fit": fit_row,
                         "quality": quality, "runtime": runtime, "source": src["facts"], "profile": profile_facts,
                         "report": {k: sha256_file(f) for k, f in report_files.items()}, "archive": cfg.archive,
                         "tools": llama_cpp_runtime()}
                key = self._key("bundle", parts)
                target = self.out / "bundles" / folder_name
                archive = None
                if cfg.archive != "none":
                    archive = target.with_name(target.name + bundle_mod.ARCHIVE_SUFFIXES[cfg.archive])
                cached = self.cache.get("bundle", key)
                if cached and target.is_dir() and (archive is None or archive.is_file()) and \
                        _manifest_sha(target) == cached.get("manifest_sha256") and \
                        (archive is None or sha256_file(archive) == cached.get("archive_sha256")):
                    self.result.steps.append(StepRecord("bundle", folder_name, key, "cached"))
                    self.result.bundles.append(BundleSummary(profile, line_name, pick, target, archive,
                                                             manifest_sha256=cached.get("manifest_sha256")))
                    continue

                def work(tmp: Path, v=v, adapters=adapters, quality=quality, fit_row=fit_row, runtime=runtime,
                         profile_facts=profile_facts, target=target) -> dict:
                    b = bundle_mod.write_bundle(target, model=v["file"], quant=v["quant"], profile=profile_facts,
                                                source=src["facts"], adapters=adapters, extra_files=report_files,
                                                fit=fit_row, quality=quality, runtime=runtime,
                                                report="report.html" if report_files else None,
                                                model_name=cfg.name if line_name == BASE_LINE
                                                else f"{cfg.name}-{line_name}", archive=cfg.archive,
                                                model_sha256=v["sha256"])
                    return {"manifest_sha256": _manifest_sha(target),
                            "archive_sha256": sha256_file(b.archive) if b.archive else None}

                # the marker is rewritten whenever the bundle is (the folder outside the cache may be edited)
                shutil.rmtree(self.cache.folder("bundle", key), ignore_errors=True)
                try:
                    done, _ = self.step("bundle", folder_name, parts, work)
                except BadGGUF as exc:  # a cached GGUF damaged behind the memo's back (same size and mtime)
                    damaged = Path(getattr(exc, "path", "")).parent
                    if self.cache.root.resolve() in damaged.resolve().parents:
                        shutil.rmtree(damaged, ignore_errors=True)
                        raise BadGGUF(exc.message, "the damaged step was removed from the cache: run the build "
                                                   "again to redo it") from None
                    raise
                self.result.bundles.append(BundleSummary(profile, line_name, pick, target, archive,
                                                         manifest_sha256=done.get("manifest_sha256")))
        self._remove_stale_bundles(bundle_mod)

    def _remove_stale_bundles(self, bundle_mod) -> None:
        """A bundle from an earlier build whose profile now has no pick (or left the config) must not linger."""
        root = self.out / "bundles"
        keep = set()
        for b in self.result.bundles:
            if b.folder is not None:
                keep.add(b.folder.name)
                if b.archive is not None:
                    keep.add(b.archive.name)
        if not root.is_dir():
            return
        for entry in sorted(root.iterdir()):
            if entry.name in keep or entry.name.startswith("."):
                continue
            is_bundle = (entry.is_dir() and (entry / bundle_mod.MANIFEST).is_file()) or (
                entry.is_file() and entry.name.endswith(tuple(bundle_mod.ARCHIVE_SUFFIXES.values())))
            if is_bundle:
                self.log(f"[bundle] removing {entry.name}: not part of this build")
                shutil.rmtree(entry) if entry.is_dir() else entry.unlink()

    def bundle_report(self, line_name: str, res: dict, report_mod) -> dict[str, Path]:
        """The report shipped inside every bundle of a line: fit and quality only (no host timings), so it is
        reproducible byte for byte."""
        if not self.config.report:
            return {}

        def work(tmp: Path) -> dict:
            with _deterministic_plots():
                rep = report_mod.write_report({"fit": res}, tmp)
            return {"html": rep.html.name, "markdown": rep.markdown.name}

        done, folder = self.step("bundle-report", line_name, {"fit": res}, work)
        return {"report.html": folder / done["html"], "report.md": folder / done["markdown"]}

    def report(self, fit_data: dict) -> None:
        cfg = self.config
        if not cfg.report:
            return
        from . import report as report_mod

        data: dict[str, Any] = {"fit": fit_data["lines"][BASE_LINE] if BASE_LINE in fit_data["lines"]
                                else next(iter(fit_data["lines"].values()))}
        bench_models = []
        for v in self._variants():
            b = v.get("bench")
            if v["line"] != BASE_LINE or not b:
                continue
            q = v.get("quality") or {}
            bench_models.append({**b, "path": str(v["file"]), "name": v["name"], "imatrix": v.get("imatrix"),
                                 "quality": {"kld": q.get("mean_kld"), "ppl": q.get("ppl"),
                                             "ppl_delta": q.get("delta_ppl"), "top1": q.get("top1_agreement")}})
        host = self.host() if bench_models else None
        if host is not None:
            data["bench"] = {"host": host, "models": bench_models, "reference": None, "quality_note": ""}
        if len(fit_data["lines"]) > 1:
            data["lines"] = fit_data["lines"]
        target = self.out / "report"

        def work(tmp: Path) -> dict:
            with _deterministic_plots():
                rep = report_mod.write_report(data, target)
            return {"html": rep.html.name, "markdown": rep.markdown.name}

        key_parts = {"data": content_key(data=json.dumps(data, sort_keys=True, default=str))}
        cached = self.cache.get("report", self._key("report", key_parts))
        if cached is not None and not (target / cached["html"]).is_file():
            shutil.rmtree(self.cache.folder("report", self._key("report", key_parts)))
        done, _ = self.step("report", "report", key_parts, work)
        self.result.report = target / done["html"]

    def host(self) -> dict:
        """This host's facts for the report (copy bandwidth measured once per host, cached)."""
        from . import bench

        cfg = self.config

        def work(tmp: Path) -> dict:
            cpu, _, cores = _host_id().rpartition(" x")
            return {"cpu": cpu, "cores": int(cores), "threads_used": cfg.threads,
                    "bandwidth_gb_s": bench.measure_bandwidth_gb_s(), "python": _python_version(),
                    "llama_cpp_python": llama_cpp_runtime()["llama_cpp_python"]}

        done, _ = self.step("host", "measure copy bandwidth", {"host": _host_id(), "threads": cfg.threads,
                                                               "llama_cpp": llama_cpp_runtime()}, work)
        return done

    def check(self, fit_data: dict | None) -> None:
        cfg = self.config
        failures = self.result.failures
        if fit_data is None:
            failures.append("no fit was made (see the skipped steps)")
            return
        for line, res in fit_data["lines"].items():
            for profile, pick in sorted(res["picks"].items()):
                if pick is None:
                    failures.append(f"{profile}{'' if line == BASE_LINE else ' (' + line + ')'}: "
                                    f"{res['summary'][profile]}")
        if cfg.max_kld is not None:
            for v in self._variants():
                kld = (v.get("quality") or {}).get("mean_kld")
                if kld is not None and kld > cfg.max_kld:
                    failures.append(f"{v['name']}: KLD {kld:.4f} exceeds max_kld {cfg.max_kld:g}")


def build(config: BuildConfig, *, only: str | None = None, progress: Progress = QUIET) -> BuildResult:
    """Run the build described by ``config`` (see the module doc). Raises ``EdgepackError`` subclasses."""
    return _Build(config, progress, only).run()


# --- helpers ----------------------------------------------------------------------------------------

# --- what a cached step depends on besides its inputs: edgepack's code and llama.cpp's build -------------
#
# Every step's work runs in this module and calls the stages from here, so the edgepack code any step can run
# is this module plus everything it imports, found by reading the sources (imports inside functions count;
# a module that imports by name at run time, like convert/families/, brings its whole package). The key
# therefore changes with any edit a step could execute, even when the version number does not (a development
# install, a patched copy); a hand-kept list per step drifted (the adapter step's left out convert/).

def source_closure(module: str = __name__, root: Path | None = None) -> list[Path]:
    """The files of every edgepack module that ``module`` can import, directly or not, sorted."""
    import ast

    root = Path(__file__).resolve().parent if root is None else Path(root)
    top = root.name  # "edgepack"

    def file_of(name: str) -> Path | None:
        rel = Path(*name.split(".")[1:])
        for f in (root / rel / "__init__.py", (root / rel).with_suffix(".py")):
            if f.is_file():
                return f
        return None

    seen: dict[str, Path] = {}
    todo = [module]
    while todo:
        name = todo.pop()
        if name in seen or not (name == top or name.startswith(top + ".")):
            continue
        f = file_of(name)
        if f is None:  # an attribute imported with `from pkg import name`, not a module
            continue
        seen[name] = f
        is_pkg = f.name == "__init__.py"
        package = name if is_pkg else name.rpartition(".")[0]
        parts = name.split(".")
        todo += [".".join(parts[:i]) for i in range(1, len(parts))]  # importing a.b.c runs a and a.b first
        tree = ast.parse(f.read_bytes(), filename=str(f))
        for node in ast.walk(tree):
            if isinstance(node, ast.Import):
                todo += [a.name for a in node.names]
            elif isinstance(node, ast.ImportFrom):
                base = node.module or ""
                if node.level:
                    anchor = package.split(".")[: len(package.split(".")) - node.level + 1]
                    base = ".".join(anchor + ([base] if base else []))
                todo += [base] + [f"{base}.{a.name}" for a in node.names]
            elif isinstance(node, ast.Call) and getattr(node.func, "attr", getattr(node.func, "id", None)) in (
                    "import_module", "iter_modules", "__import__"):
                folder = f.parent  # imports by name: every module of this package may run
                todo += [top + "." + ".".join(p.relative_to(root).with_suffix("").parts).removesuffix(".__init__")
                         for p in folder.rglob("*.py")]
    return sorted(set(seen.values()))


_CODE_HASH: dict[Path, str] = {}


def code_hash(root: Path | None = None) -> str:
    """A digest of the edgepack code a build step can run (``source_closure`` of this module)."""
    root = Path(__file__).resolve().parent if root is None else Path(root)
    if root not in _CODE_HASH:
        digest = hashlib.sha256()
        for f in source_closure(root=root):
            digest.update(f.relative_to(root).as_posix().encode() + b"\0" + f.read_bytes() + b"\0")
        _CODE_HASH[root] = digest.hexdigest()[:16]
    return _CODE_HASH[root]


_LIB_DIGESTS: dict[tuple, str] = {}


def llama_cpp_runtime() -> dict[str, str]:
    """The llama.cpp that quantizes, evaluates and benches: llama-cpp-python's version and a digest of the
    shared libraries it loads (libllama, libggml*). The libraries carry no commit id of their own (a build from
    the sdist reports none), and two builds of one version differ (CPU flags, AMX or not): their bytes do not
    lie. Part of the quantize, eval, bench and host keys, so a new runtime measures again."""
    import llama_cpp
    from llama_cpp import llama_cpp as bindings

    # where the bindings loaded libllama from (LLAMA_CPP_LIB_PATH or the package's lib/ folder)
    lib_dir = Path(getattr(bindings, "_base_path", Path(llama_cpp.__file__).parent / "lib"))
    return {"llama_cpp_python": str(llama_cpp.__version__), "libs": shared_libs_digest(lib_dir)}


def shared_libs_digest(folder: Path) -> str:
    """sha256 over the shared libraries in ``folder`` (each once, symlinks resolved), memoised on their stats."""
    libs = sorted({p.resolve() for p in Path(folder).glob("*") if p.is_file() and (
        ".so" in p.suffixes or p.suffix in (".dylib", ".dll"))})
    stats = tuple((str(p), p.stat().st_size, p.stat().st_mtime_ns) for p in libs)
    if stats not in _LIB_DIGESTS:
        digest = hashlib.sha256()
        for p in libs:
            digest.update(p.name.encode() + b"\0" + p.read_bytes())
        _LIB_DIGESTS[stats] = digest.hexdigest()[:16]
    return _LIB_DIGESTS[stats]


def _python_version() -> str:
    import platform
    return platform.python_version()


def _host_id() -> str:
    import platform
    cpu = platform.processor() or platform.machine()
    with contextlib.suppress(OSError):
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    return f"{cpu} x{os.cpu_count()}"


def _manifest_sha(folder: Path) -> str | None:
    try:
        return sha256_file(folder / "manifest.json")
    except OSError:
        return None


@contextlib.contextmanager
def _tempdir():
    import tempfile
    with tempfile.TemporaryDirectory(prefix="edgepack-build-") as tmp:
        yield tmp


def _head_tokens(text: str, n_tokens: int) -> str:
    """About ``n_tokens`` tokens of ``text`` (4 characters a token), cut at a line end: a bounded eval."""
    limit = n_tokens * 4
    if len(text) <= limit:
        return text
    cut = text.rfind("\n", 0, limit)
    return text[: cut if cut > 0 else limit]


@contextlib.contextmanager
def _deterministic_plots():
    """matplotlib writes a date and random ids into SVGs unless told otherwise; reports must be reproducible."""
    old = os.environ.get("SOURCE_DATE_EPOCH")
    os.environ["SOURCE_DATE_EPOCH"] = "0"
    saved = None
    try:
        import matplotlib
        saved = matplotlib.rcParams.get("svg.hashsalt")
        matplotlib.rcParams["svg.hashsalt"] = "edgepack"
    except ImportError:  # pragma: no cover
        pass
    try:
        yield
    finally:
        if old is None:
            os.environ.pop("SOURCE_DATE_EPOCH", None)
        else:
            os.environ["SOURCE_DATE_EPOCH"] = old
        if saved is not None or "matplotlib" in globals():
            with contextlib.suppress(ImportError):
                import matplotlib
                matplotlib.rcParams["svg.hashsalt"] = saved


__all__ = ["build", "plan", "matrix", "lines", "BuildResult", "StepRecord", "StepCache", "Unit", "content_key",
           "EdgepackError"]
