"""ltcompress.edge and ltcompress.presets in a source checkout. The repository keeps export/ and presets/ at its
top level (the design card) and pyproject.toml installs them inside the package. Run from a clone's root with a
non-editable install or none (``python -m ltcompress``, ``torchrun -m ltcompress``), Python imports the tree's
own ltcompress/, beside which they sit uninstalled: importing this module (ltcompress/__init__.py does, first)
makes them the subpackages. A wheel, which holds them, and an editable install of this tree, which maps them to
these same folders, are left as the import system finds them."""

from __future__ import annotations

import importlib.util
import sys
from pathlib import Path

SUBPACKAGES = {"edge": "export", "presets": "presets"}  # ltcompress.<name> -> its folder in the repository


def _map_source_folders() -> None:
    """Each subpackage the import system does not find in this package or in its folder beside the package
    (none, or another tree's) is that folder, when the folder is there."""
    package = Path(__file__).resolve().parent
    for name, folder in SUBPACKAGES.items():
        full, source = f"ltcompress.{name}", package.parent / folder
        found = importlib.util.find_spec(full)
        where = Path(found.origin).resolve().parent if found is not None and found.origin else None
        if where in (package / name, source) or not (source / "__init__.py").is_file():
            continue
        spec = importlib.util.spec_from_file_location(
            full, source / "__init__.py", submodule_search_locations=[str(source)]
        )
        assert spec is not None and spec.loader is not None  # a .py file always has a spec and a loader
        module = importlib.util.module_from_spec(spec)
        sys.modules[full] = module
        spec.loader.exec_module(module)
        setattr(sys.modules["ltcompress"], name, module)  # as an import would: ltcompress.edge.runtime


_map_source_folders()
