"""The steps of a build, one module each: a step is a short function that calls its stage directly and returns
an artifact (``..artifacts``), cached through ``BuildContext.step``.

A step's cache key holds the code of its own module and everything that module imports (``..codekey``), so this
``__init__`` imports nothing: each step depends on its own stage only.

Adding a step: a module here whose function builds its key parts (its inputs' hashes and its settings), defines
``work(tmp) -> dict`` (make the files in ``tmp``, return what was made: ``file``/``sha256`` for one file, ``files``
for several, so the cache re-checks them), calls ``ctx.step(name, label, parts, work, code=__name__)`` and returns
an artifact; then one call in ``..run.build``. For example:

* a vision projector (done: ``steps/mmproj.py``): converts it (``convert.mmproj``) into a ``ProjectorGGUF``
  artifact; ``run.build`` hands it to ``fit_lines`` (its memory) and ``make_bundle``, which passes it to
  ``bundle.write_bundle(mmproj=...)`` and adds its sha256 to the bundle's key parts;
* a variant built with and without an importance matrix (``[quantize] imatrix = "compare"``): ``plan.Unit``
  has the choice, ``plan.plan`` emits both units, and ``quantize_variant`` passes the line's ``Imatrix`` only
  where the unit asks for it (its sha256 is already in the key); ``steps/report.bench_row`` carries the imatrix
  and the quant per variant, which the report pairs;
* a per-device quantization mix (``[quantize] device_mixes``, ``steps/mix.py``): a unit per device and a step
  that calls the mix stage on the line's base and returns a ``Variant``, so eval, bench, fit and bundles take it
  like any other.
"""
