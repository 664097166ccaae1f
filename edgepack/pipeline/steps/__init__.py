"""The steps of a build, one module each: a step is a short function that calls its stage directly and returns
an artifact (``..artifacts``), cached through ``BuildContext.step``.

A step's cache key holds the code of its own module and everything that module imports (``..codekey``), so this
``__init__`` imports nothing: each step depends on its own stage only. Adding a step = a module here with one
function that calls ``ctx.step(name, label, parts, work, code=__name__)``, and one call in ``..run``.
"""
