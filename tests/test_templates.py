import jinja2
import jinja2.sandbox
import pytest

from recipes.base import Template

REF = jinja2.sandbox.SandboxedEnvironment(undefined=jinja2.StrictUndefined)


@pytest.mark.parametrize(
    ("source", "values", "plain"),
    [
        ("{{ text }}", {"text": "seed with {{ braces }} and {0}"}, True),
        ("Q: {{ q }}\nA: {{a}} end", {"q": 1, "a": None}, True),
        ("  {{x}}{{y}}  ", {"x": 1.5, "y": "é"}, True),
        ("{ literal } {{ x }} {", {"x": [1, {"a": True}]}, True),
        ("{{ x|upper }}", {"x": "a"}, False),
        ("{{ x.y }}", {"x": {"y": 2}}, False),
        ("{% for i in range(2) %}{{ i }}{% endfor %}", {}, False),
        ("{# note #}{{ x }}", {"x": 1}, False),
    ],
)
def test_fast_path_renders_like_jinja(source, values, plain):
    t = Template(source, "t")
    assert (t._format is not None) is plain
    assert t.render(**values) == REF.from_string(source).render(**values).strip()


def test_missing_field_is_undefined_on_both_paths():
    for source in ("{{ text }}", "{{ text|upper }}"):
        with pytest.raises(jinja2.UndefinedError, match="'text' is undefined"):
            Template(source, "t").render()


def test_sandbox_blocks_unsafe_attribute_access():
    with pytest.raises(jinja2.exceptions.SecurityError):
        Template("{{ x.__class__.__mro__ }}", "t").render(x="a")
