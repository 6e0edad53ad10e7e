"""fms_lightning._imports: the one ``pkg.mod:attr`` importer (recipes, hub manifests, sweep recipes)."""

from __future__ import annotations

import pytest

from fms_lightning._imports import import_object
from fms_lightning.errors import ConfigurationError, HubError
from fms_lightning.hub import import_object as hub_import_object


def test_imports_dotted_attributes() -> None:
    assert import_object("fms_lightning.hub:ModelHub.from_directory").__name__ == "from_directory"


@pytest.mark.parametrize(
    ("spec", "match"),
    [
        ("no_colon", r"Expected 'package.module:attribute', got 'no_colon'"),
        ("fms_lightning.hub:", "Expected 'package.module:attribute'"),
        ("no.such.module:thing", r"Cannot import 'no.such.module:thing'"),
        ("fms_lightning.hub:nothing", r"Cannot import 'fms_lightning.hub:nothing'"),
    ],
)
def test_errors_say_what_was_given_with_the_callers_class(spec: str, match: str) -> None:
    with pytest.raises(ConfigurationError, match=match):
        import_object(spec)
    with pytest.raises(HubError, match=match):
        hub_import_object(spec)
