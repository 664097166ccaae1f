"""Importance matrix (imatrix): which input columns of each weight matrix carry the most signal.

llama.cpp's low-bit quantizers weigh each weight's rounding error by how large the activations it multiplies
are. The statistic is, for every weight matrix W used in a matrix product W·x, the sum over calibration tokens
of x_j² for each input column j, and the number of tokens (llama.cpp's tools/imatrix/imatrix.cpp, whose facts
this module follows; the code is edgepack's own):

- the model runs over the calibration text in chunks of ``ctx`` tokens, each chunk from an empty cache, its
  first token replaced by BOS when the vocabulary adds one, every position's logits requested (otherwise
  llama.cpp skips the last layer's FFN for all but the last token);
- the scheduler's eval callback (``cb_eval``) sees every graph node: a ``MUL_MAT`` whose weight is a
  ``blk.*`` tensor (and ``output.weight`` with ``process_output``) over at least 16 F32 rows, and every
  ``MUL_MAT_ID`` (mixture-of-experts: the input of each token goes to the experts its router chose, so sums and
  counts are kept per expert) is collected; the tensor's name is the weight's, without backend prefixes;
- the per-column importance the quantizer uses is in_sum2 / count (per expert), 1 where an expert never ran.

Memory: the sums (float64, one per weight column per expert) plus one chunk's activations and logits; the text
is read and tokenized in blocks (edgepack.calibration), so a long calibration file costs no more than a short
one.

File: llama.cpp's GGUF imatrix (``general.type = imatrix``; per weight ``<name>.in_sum2``, F32, shape
[n_cols, n_mat] in ggml order, and ``<name>.counts``, F32, [1, n_mat]; ``imatrix.datasets``,
``imatrix.chunk_count``, ``imatrix.chunk_size``), which ``llama-quantize --imatrix`` reads. edgepack adds
``edgepack.imatrix.*`` keys (calibration sha256, model identity) that llama.cpp ignores. The legacy ``.dat``
format of older llama-imatrix builds is read too.

Modules: ``data`` (the statistics and their file), ``collect`` (the eval callback), ``run`` (the model run over
the text).
"""

from .collect import MIN_ROWS, Collector, weight_name
from .data import (KEY_CALIBRATION, KEY_CHUNK_COUNT, KEY_CHUNK_SIZE, KEY_DATASETS, KEY_MODEL, KEY_MODEL_FINGERPRINT,
                   KEY_PROCESS_OUTPUT, Entry, Imatrix, check_model, digest, read, write)
from .run import DEFAULT_CTX, ImatrixResult, compute, ensure, token_chunks

__all__ = ["Collector", "DEFAULT_CTX", "Entry", "Imatrix", "ImatrixResult", "KEY_CALIBRATION", "KEY_CHUNK_COUNT",
           "KEY_CHUNK_SIZE", "KEY_DATASETS", "KEY_MODEL", "KEY_MODEL_FINGERPRINT", "KEY_PROCESS_OUTPUT", "MIN_ROWS",
           "check_model", "compute", "digest", "ensure", "read", "token_chunks", "weight_name", "write"]
