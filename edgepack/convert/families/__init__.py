"""One module per architecture family. Every module in this folder is imported (and so registers its
``ArchSpec``) when ``edgepack.convert`` is imported: adding a family is adding a file here."""

import importlib
import pkgutil

for _module in pkgutil.iter_modules(__path__):
    importlib.import_module(f"{__name__}.{_module.name}")
