"""Property-based tests of registry.yaml handling: any input is either accepted or
refused with a RegistryError naming the file; nothing else escapes."""

from __future__ import annotations

import yaml
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from harness.errors import RegistryError
from harness.config.registry import read_registry_file

scalars = st.one_of(st.none(), st.booleans(), st.integers(-5, 5), st.floats(allow_nan=False, width=32), st.text(max_size=8))
values = st.recursive(scalars, lambda inner: st.one_of(st.lists(inner, max_size=3), st.dictionaries(st.text(max_size=8), inner, max_size=3)), max_leaves=8)
sections = st.sampled_from(["plugins", "datasets", "generators", "encoders", "tasks", "profiles", "slurm", "unknown"])
instance = st.fixed_dictionaries(
    {"plugin": st.one_of(st.text(max_size=6), st.integers())},
    optional={"params": values, "group": st.sampled_from(["procedural", "target", "bogus", 3]), "paper_row": scalars},
)
documents = st.one_of(
    values,
    st.dictionaries(sections, st.one_of(values, st.dictionaries(st.text(min_size=1, max_size=8), instance, max_size=3)), max_size=4),
)


@settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(document=documents)
def test_any_document_is_accepted_or_refused_clearly(tmp_path, document):
    path = tmp_path / "registry.yaml"
    path.write_text(yaml.safe_dump(document))
    try:
        parsed = read_registry_file(path)
    except RegistryError as exc:
        assert str(path) in str(exc)
        return
    assert isinstance(parsed.encoders, dict)


@settings(max_examples=100, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(text=st.text(max_size=60))
def test_arbitrary_text_never_crashes_the_reader(tmp_path, text):
    path = tmp_path / "registry.yaml"
    path.write_text(text)
    try:
        read_registry_file(path)
    except RegistryError as exc:
        assert str(path) in str(exc)


def test_yaml_tags_that_would_build_objects_are_refused(tmp_path):
    path = tmp_path / "registry.yaml"
    path.write_text("plugins: !!python/object/apply:os.system ['echo pwned']\n")
    try:
        read_registry_file(path)
    except RegistryError as exc:
        assert "not valid YAML" in str(exc)
    else:
        raise AssertionError("a python/object tag was accepted")
