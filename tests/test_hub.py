"""ModelHub: manifests, safe loading, and errors that name the entry."""

from __future__ import annotations

import json

import pytest
import torch
from safetensors.torch import save_file
from torch import nn

from fms_lightning.errors import HubError, UnknownHubError
from fms_lightning.hub import HubEntry, ModelHub


def make_mlp(width: int = 8) -> nn.Module:
    return nn.Sequential(nn.Linear(4, width), nn.ReLU(), nn.Linear(width, 3))


class _Evil:
    def __reduce__(self):
        return (print, ("unpickled!",))


def _hub_dir(tmp_path, entries, fmt="yaml"):
    import yaml

    text = yaml.safe_dump({"entries": entries}) if fmt == "yaml" else json.dumps({"entries": entries})
    (tmp_path / f"hub.{fmt}").write_text(text)
    return tmp_path


@pytest.mark.parametrize("fmt", ["yaml", "json"])
def test_from_directory_builds_entries_with_their_weights(tmp_path, fmt) -> None:
    torch.manual_seed(0)
    a, b = make_mlp(8), make_mlp(16)
    save_file(a.state_dict(), str(tmp_path / "a.safetensors"))
    torch.save(b.state_dict(), tmp_path / "b.pt")
    factory = f"{__name__}:make_mlp"
    hub = ModelHub.from_directory(_hub_dir(tmp_path, [
        {"name": "mlp-8", "factory": factory, "weights": "a.safetensors", "metadata": {"pretrain_epochs": 3}},
        {"name": "mlp-16", "factory": factory, "kwargs": {"width": 16}, "weights": "b.pt"},
    ], fmt), trusted_factories=[make_mlp])
    assert hub.names == ["mlp-8", "mlp-16"] and len(hub) == 2
    for entry, ref in zip(hub, (a, b)):
        built = entry.build()
        assert all(torch.equal(x, y) for x, y in zip(built.state_dict().values(), ref.state_dict().values()))
    assert hub["mlp-8"].metadata == {"pretrain_epochs": 3}


def test_unknown_entry_lists_the_valid_ones(tmp_path) -> None:
    hub = ModelHub([HubEntry("one", make_mlp), HubEntry("two", make_mlp)])
    with pytest.raises(KeyError, match=r"\['one', 'two'\]"):
        hub["three"]
    with pytest.raises(UnknownHubError, match=r"^No hub entry 'three'; the hub has \['one', 'two'\]\.$") as info:
        hub.get("three")
    assert isinstance(info.value, HubError)  # a hub error, and a KeyError as a mapping's lookup raises


@pytest.mark.parametrize("name", ["../evil", "a/b", "..", "", ".hidden"])
def test_names_that_would_escape_are_refused(tmp_path, name) -> None:
    with pytest.raises(HubError, match="Invalid hub entry name"):
        HubEntry(name, make_mlp)
    with pytest.raises(HubError, match="Invalid hub entry name"):
        ModelHub.from_directory(_hub_dir(tmp_path, [{"name": name, "factory": f"{__name__}:make_mlp"}]),
                                trusted_factories=[make_mlp])


def test_weights_path_that_escapes_is_refused(tmp_path) -> None:
    inner = tmp_path / "hub"
    inner.mkdir()
    save_file(make_mlp().state_dict(), str(tmp_path / "outside.safetensors"))
    with pytest.raises(HubError, match="escapes the hub folder"):
        ModelHub.from_directory(_hub_dir(inner, [
            {"name": "x", "factory": f"{__name__}:make_mlp", "weights": "../outside.safetensors"}]),
            trusted_factories=[make_mlp])


def test_missing_and_corrupt_files_name_the_entry(tmp_path) -> None:
    with pytest.raises(HubError, match="'gone'.*does not exist"):
        ModelHub.from_directory(_hub_dir(tmp_path, [
            {"name": "gone", "factory": f"{__name__}:make_mlp", "weights": "nope.safetensors"}]),
            trusted_factories=[make_mlp])
    (tmp_path / "bad.safetensors").write_bytes(b"not a safetensors file")
    entry = HubEntry("broken", make_mlp, tmp_path / "bad.safetensors")
    with pytest.raises(HubError, match="'broken'.*corrupt"):
        entry.build()


def test_arbitrary_pickles_are_never_unpickled(tmp_path, capsys) -> None:
    torch.save({"weight": _Evil()}, tmp_path / "evil.pt")
    with pytest.raises(HubError, match="'evil'"):
        HubEntry("evil", make_mlp, tmp_path / "evil.pt").state_dict()
    assert "unpickled!" not in capsys.readouterr().out


def test_weights_that_do_not_fit_and_bad_factories(tmp_path) -> None:
    save_file(make_mlp(8).state_dict(), str(tmp_path / "w.safetensors"))
    with pytest.raises(HubError, match="'wide'.*do not fit"):
        HubEntry("wide", make_mlp, tmp_path / "w.safetensors", kwargs={"width": 32}).build()
    with pytest.raises(HubError, match="not an nn.Module"):
        HubEntry("str", lambda: "model").build()
    with pytest.raises(HubError, match="Cannot import"):
        ModelHub.from_directory(_hub_dir(tmp_path, [{"name": "x", "factory": "no.such.module:f"}]), trust_code=True)
    with pytest.raises(HubError, match="Duplicate"):
        ModelHub([HubEntry("a", make_mlp), HubEntry("a", make_mlp)])


# ---------------------------------------------------------------- manifests cannot run code by default
_SIDE_EFFECT_MODULE = """
import pathlib
pathlib.Path({marker!r}).write_text("imported")

def make(width=8):
    import torch
    return torch.nn.Linear(4, width)
"""


def _side_effect_module(tmp_path, monkeypatch, name: str = "fms_untrusted_mod"):
    """An importable module that leaves a marker file when it is imported."""
    lib = tmp_path / "lib"
    lib.mkdir(exist_ok=True)
    marker = tmp_path / f"{name}.imported"
    (lib / f"{name}.py").write_text(_SIDE_EFFECT_MODULE.format(marker=str(marker)))
    monkeypatch.syspath_prepend(str(lib))
    return marker


@pytest.mark.parametrize("entry", [
    {"factory": "os:system", "kwargs": {"command": "touch {pwned}"}},
    {"factory": "subprocess:call", "kwargs": {"args": ["touch", "{pwned}"]}},
    {"factory": "builtins:exec", "kwargs": {"source": "open('{pwned}', 'w')"}},
    {"factory": "fms_untrusted_mod:make"},
    {"factory": "models.py:make"},
])
def test_a_manifest_cannot_run_code_it_names(tmp_path, monkeypatch, entry) -> None:
    marker = _side_effect_module(tmp_path, monkeypatch)
    hub = tmp_path / "hub"
    hub.mkdir()
    (hub / "models.py").write_text(_SIDE_EFFECT_MODULE.format(marker=str(marker)))
    pwned = tmp_path / "PWNED"
    text = json.dumps(entry).replace("{pwned}", str(pwned))
    good = {"name": "good", "factory": "fms_lightning.examples.hub_models:make", "kwargs": {"arch": "mlp"}}
    _hub_dir(hub, [good, {"name": "evil", **json.loads(text)}])
    with pytest.raises(HubError, match=r"entry 'evil'.*not trusted.*nothing was imported.*(trusted_factories|trust_code)"):
        ModelHub.from_directory(hub)
    assert not pwned.exists() and not marker.exists()  # refused before importing or calling anything


def test_the_library_factories_and_trusted_ones_are_allowed(tmp_path, monkeypatch) -> None:
    marker = _side_effect_module(tmp_path, monkeypatch, "fms_trusted_mod")
    hub = ModelHub.from_directory(_hub_dir(tmp_path, [
        {"name": "lib", "factory": "fms_lightning.examples.hub_models:make", "kwargs": {"arch": "mlp", "width": 8}},
        {"name": "mine", "factory": f"{__name__}:make_mlp"},
        {"name": "named", "factory": "fms_trusted_mod:make"},
    ]), trusted_factories=[make_mlp, "fms_trusted_mod:make"])
    assert hub["mine"].factory is make_mlp  # a callable given in code is used as is
    assert isinstance(hub["lib"].build(), nn.Module) and isinstance(hub["named"].build(), nn.Linear)
    assert marker.exists()
    # Trusting one factory of a module does not trust the others.
    with pytest.raises(HubError, match="'other'.*not trusted"):
        ModelHub.from_directory(_hub_dir(tmp_path, [{"name": "other", "factory": f"{__name__}:_Evil"}]),
                                trusted_factories=[make_mlp])


def test_trust_code_loads_a_factory_from_the_hub_folder(tmp_path) -> None:
    (tmp_path / "models.py").write_text("import torch\n\ndef make(width=8):\n    return torch.nn.Linear(4, width)\n")
    _hub_dir(tmp_path, [{"name": "local", "factory": "models.py:make", "kwargs": {"width": 5}}])
    with pytest.raises(HubError, match="'local'.*trust_code=True"):
        ModelHub.from_directory(tmp_path)
    hub = ModelHub.from_directory(tmp_path, trust_code=True)
    assert hub["local"].build().out_features == 5
    import pickle

    assert pickle.loads(pickle.dumps(hub))["local"].build().out_features == 5  # e.g. for Ray workers
    outside = tmp_path / "hub2"
    outside.mkdir()
    _hub_dir(outside, [{"name": "esc", "factory": "../models.py:make"}])
    with pytest.raises(HubError, match="'esc'.*inside the hub folder"):
        ModelHub.from_directory(outside, trust_code=True)


def test_malformed_factories_and_kwargs_are_refused(tmp_path) -> None:
    for factory in ("os.system", "a:b:c", 42, ":x"):
        with pytest.raises(HubError, match="factory must be a 'package.module:attribute' string"):
            ModelHub.from_directory(_hub_dir(tmp_path, [{"name": "x", "factory": factory}]))
    with pytest.raises(HubError, match="'kwargs' and 'metadata' must be mappings"):
        ModelHub.from_directory(_hub_dir(tmp_path, [
            {"name": "x", "factory": "fms_lightning.examples.hub_models:make", "kwargs": [1]}]))
    with pytest.raises(HubError, match="does not exist or is not a folder"):
        ModelHub.from_directory(tmp_path / "nope")


@pytest.mark.parametrize("name", ["evil.pt", "evil.ckpt", "evil.pkl", "evil.safetensors"])
def test_pickle_payloads_as_hub_weights_are_refused(tmp_path, capsys, name) -> None:
    import pickle

    payload = {"weight": _Evil()}
    if name.endswith(".ckpt"):
        torch.save({"state_dict": payload, "epoch": 3}, tmp_path / name)
    elif name.endswith(".pt"):
        torch.save(payload, tmp_path / name)
    else:  # a raw pickle, also under a safetensors name
        (tmp_path / name).write_bytes(pickle.dumps(payload))
    hub = ModelHub.from_directory(_hub_dir(tmp_path, [
        {"name": "evil", "factory": "fms_lightning.examples.hub_models:make", "kwargs": {"arch": "mlp"},
         "weights": name}]))
    with pytest.raises(HubError, match=r"'evil'.*(corrupt|not a weights file|not a safetensors)"):
        hub["evil"].build()
    assert "unpickled!" not in capsys.readouterr().out


def test_a_weights_symlink_that_leaves_the_folder_is_refused(tmp_path) -> None:
    inner = tmp_path / "hub"
    inner.mkdir()
    save_file(make_mlp().state_dict(), str(tmp_path / "outside.safetensors"))
    (inner / "w.safetensors").symlink_to(tmp_path / "outside.safetensors")
    with pytest.raises(HubError, match="escapes the hub folder"):
        ModelHub.from_directory(_hub_dir(inner, [
            {"name": "x", "factory": "fms_lightning.examples.hub_models:make", "weights": "w.safetensors"}]))
