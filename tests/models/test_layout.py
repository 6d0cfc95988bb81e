"""The modules that moved into models.networks, models.inference and models.engine still import
under their old names, as the same module objects, with a DeprecationWarning saying where."""

import importlib
import sys

import pytest

from models import _MOVED


@pytest.mark.parametrize("old", sorted(_MOVED))
def test_an_old_module_name_imports_the_moved_module_and_warns(old):
    sys.modules.pop(old, None)
    with pytest.warns(DeprecationWarning, match=f"^{old} moved to {_MOVED[old]}: import it from there$"):
        module = importlib.import_module(old)
    assert module is importlib.import_module(_MOVED[old])
