"""Facts about this host and the tools edgepack runs on it, read in one place.

``bench`` reports them beside its measurements, ``build`` keys its cached measurements on them (a bench result
is valid for one CPU, thread count and llama.cpp) and bundles record the tool versions they were built with.
The CPU's name comes from /proc/cpuinfo where there is one (Linux, Android), else from ``platform``; the ISA
features are the ones the loaded llama.cpp build uses, in a profile's names.
"""

from __future__ import annotations

import contextlib
import hashlib
import os
import platform
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from . import __version__
from .fileio import stat_fingerprint


def cpu_name() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def host_id() -> str:
    """The CPU and its core count ("AMD EPYC 7B13 x2"): what a measurement on this host is valid for."""
    return f"{cpu_name()} x{os.cpu_count()}"


def python_version() -> str:
    return platform.python_version()


def llama_cpp_version() -> str:
    """llama-cpp-python's version (the llama.cpp it bundles is pinned by it)."""
    import llama_cpp

    return str(llama_cpp.__version__)


# llama_print_system_info flags -> profile ISA names (edgepack.profiles.ISA_FEATURES)
_ISA_FLAGS = {"AVX2": "avx2", "AVX512": "avx512", "AVX512_VNNI": "avx512_vnni", "AVX_VNNI": "avx_vnni",
              "NEON": "neon", "DOTPROD": "dotprod", "MATMUL_INT8": "i8mm", "SVE": "sve", "SME": "sme",
              "AMX_INT8": "amx"}


def host_isa() -> tuple[str, ...]:
    """The ISA features the loaded llama.cpp build uses on this host, as a profile's ``isa`` names them (they
    decide which weight types its CPU backend repacks)."""
    import llama_cpp

    info = llama_cpp.llama_print_system_info().decode(errors="replace")
    on = {part.split("=")[0].strip().split()[-1] for part in info.split("|") if part.strip().endswith("= 1")}
    return tuple(name for flag, name in _ISA_FLAGS.items() if flag in on)


def build_has_amx() -> bool:
    """Whether the loaded llama.cpp was compiled with AMX kernels (a -march=native build on an AMX Xeon): their
    repacked buffers crash on the first decode with llama-cpp-python 0.3.36, so weights are then not repacked."""
    import llama_cpp

    info = llama_cpp.llama_print_system_info().decode(errors="replace")
    return "amx" in host_isa() or any(f"{k} = 1" in info for k in ("AMX_TILE", "AMX_BF16"))


def measure_bandwidth_gb_s(size_mb: int = 256, reps: int = 5) -> float:
    """Copy bandwidth of this host: bytes read + written per second for a buffer far larger than caches."""
    src = np.ones(size_mb * 2**20 // 8, dtype=np.float64)
    dst = np.empty_like(src)
    best = float("inf")
    for _ in range(reps):
        t = time.perf_counter()
        np.copyto(dst, src)
        best = min(best, time.perf_counter() - t)
    return round(2 * src.nbytes / best / 1e9, 2)


@dataclass
class HostInfo:
    cpu: str
    cores: int
    threads_used: int
    bandwidth_gb_s: float
    python: str
    llama_cpp_python: str

    @classmethod
    def current(cls, threads: int) -> HostInfo:
        """This host, its copy bandwidth measured now (about a second)."""
        return cls(cpu=cpu_name(), cores=os.cpu_count() or 1, threads_used=threads,
                   bandwidth_gb_s=measure_bandwidth_gb_s(), python=python_version(),
                   llama_cpp_python=llama_cpp_version())


def tool_versions() -> dict:
    """edgepack, gguf-py and llama.cpp (llama-cpp-python's version and its build's system info)."""
    versions = {"edgepack": __version__}
    with contextlib.suppress(Exception):
        from importlib.metadata import version
        versions["gguf"] = version("gguf")
    try:
        import llama_cpp
        versions["llama_cpp_python"] = llama_cpp.__version__
        info = llama_cpp.llama_print_system_info()
        versions["llama_cpp_system_info"] = (info.decode() if isinstance(info, bytes) else str(info)).strip(" |")
    except ImportError:  # pragma: no cover - llama-cpp-python is a dependency
        versions["llama_cpp_python"] = None
    return versions


def llama_cpp_runtime() -> dict[str, str]:
    """The llama.cpp that quantizes, evaluates and benches: llama-cpp-python's version and a digest of the
    shared libraries it loads (libllama, libggml*). The libraries carry no commit id of their own (a build from
    the sdist reports none), and two builds of one version differ (CPU flags, AMX or not): their bytes do not
    lie."""
    import llama_cpp
    from llama_cpp import llama_cpp as bindings

    # where the bindings loaded libllama from (LLAMA_CPP_LIB_PATH or the package's lib/ folder)
    lib_dir = Path(getattr(bindings, "_base_path", Path(llama_cpp.__file__).parent / "lib"))
    return {"llama_cpp_python": llama_cpp_version(), "libs": shared_libs_digest(lib_dir)}


_LIB_DIGESTS: dict[tuple, str] = {}  # memo: (path, fileio.stat_fingerprint) of each library -> digest


def shared_libs_digest(folder: Path) -> str:
    """sha256 over the shared libraries in ``folder`` (each once, symlinks resolved), memoised on their stats."""
    libs = sorted({p.resolve() for p in Path(folder).glob("*") if p.is_file() and (
        ".so" in p.suffixes or p.suffix in (".dylib", ".dll"))})
    stats = tuple((str(p), stat_fingerprint(p)) for p in libs)
    if stats not in _LIB_DIGESTS:
        digest = hashlib.sha256()
        for p in libs:
            digest.update(p.name.encode() + b"\0" + p.read_bytes())
        _LIB_DIGESTS[stats] = digest.hexdigest()[:16]
    return _LIB_DIGESTS[stats]
