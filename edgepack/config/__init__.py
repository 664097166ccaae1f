"""The pipeline config: ``edgepack.toml`` (or ``[tool.edgepack]`` in pyproject.toml) -> one frozen ``BuildConfig``.

Options resolve in one place, with the precedence CLI > environment (``EDGEPACK_*``) > file > defaults.
Every option has one row in ``OPTIONS`` (its dotted key in the file, its environment variable, its parser),
so the file schema, the environment names and ``edgepack config`` can never disagree.

Unknown keys and bad values are ``ConfigError`` with ``file:line`` (tomllib gives no positions: the line is
found by scanning the file's text for the key inside its table).

Modules: ``options`` (the table and its value parsers), ``tomlfile`` (finding and reading the file, ``line_of``),
``cascade`` (``resolve``), ``build_config`` (the resolved, frozen result).

Example (``examples/demo/edgepack.toml`` is a complete one)::

    name = "demo"
    source = "./model"                 # a local folder (relative to this file) or "org/repo@revision"

    [quantize]
    types = ["Q8_0", "Q4_K_M"]         # llama.cpp type names, or bit widths: bits = [8, 4]

    [[adapters]]
    name = "dialogue"
    path = "./adapter"
    mode = "convert"                   # convert (a GGUF LoRA file), merge (into the weights) or both
    scales = [1.0]

    [profiles]
    names = ["pixel-8", "raspberry-pi-5-8gb"]   # default: every shipped profile

    [constraints]
    ctx = 2048
    min_tps = 5.0
    max_kld = 0.1

    [outputs]
    dir = "dist"
    archive = "tar.zst"                # none, tar.zst or zip
"""

from .build_config import AdapterSpec, BuildConfig
from .cascade import resolve
from .options import ADAPTER_MODES, ARCHIVES, DEFAULTS, OPTIONS, OUTTYPES, Option
from .tomlfile import CONFIG_NAMES, find_config, line_of, read_config_file

__all__ = ["ADAPTER_MODES", "ARCHIVES", "AdapterSpec", "BuildConfig", "CONFIG_NAMES", "DEFAULTS", "OPTIONS", "OUTTYPES",
           "Option", "find_config", "line_of", "read_config_file", "resolve"]
