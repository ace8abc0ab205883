"""Datasette's templates compiled once (gateway/compiled_templates.py): used only by an
environment that compiles them the same."""

from __future__ import annotations

from typing import Any

import jinja2
from datasette.app import Datasette

from gateway.compiled_templates import CompiledTemplates


def datasette_environment() -> jinja2.Environment:
    environment: jinja2.Environment = Datasette([], settings={"num_sql_threads": 0}).jinja_env
    return environment


def cached_code(cache: CompiledTemplates, environment: jinja2.Environment, name: str) -> Any:
    """What `environment` would load from `cache` for template `name` (None: it compiles)."""
    source, filename, _ = environment.loader.get_source(environment, name)  # type: ignore[union-attr]
    return cache.get_bucket(environment, name, filename, source).code


def compiled(names: list[str]) -> CompiledTemplates:
    cache = CompiledTemplates()
    environment = datasette_environment()
    environment.bytecode_cache = cache
    for name in names:
        environment.get_template(name)
    cache.sealed = True
    return cache


def test_another_datasette_loads_what_one_compiled_and_renders_the_same() -> None:
    cache = compiled(["table.html", "_description_source_license.html"])
    assert len(cache) == 2
    fresh = datasette_environment()
    assert cached_code(cache, fresh, "table.html") is not None
    fresh.bytecode_cache = cache
    name = "_description_source_license.html"
    loaded = fresh.get_template(name)
    compiled_here = datasette_environment().get_template(name)
    context = {"metadata": {"description": "Fish & <chips>", "license": "CC BY",
                            "license_url": "https://example.com/license"}}
    page = loaded.render(context)
    assert "Fish &amp; &lt;chips&gt;" in page and "CC BY" in page
    assert page == compiled_here.render(context)


def test_an_environment_with_another_filter_compiles_for_itself() -> None:
    """A plugin's filter that is passed the context changes the code Jinja writes for it."""
    cache = compiled(["table.html"])
    environment = datasette_environment()
    environment.filters["extra"] = jinja2.pass_context(lambda context, value: value)
    assert cached_code(cache, environment, "table.html") is None


def test_a_changed_template_is_compiled_again() -> None:
    cache = compiled(["table.html"])
    environment = datasette_environment()
    source, filename, _ = environment.loader.get_source(environment, "table.html")  # type: ignore[union-attr]
    bucket = cache.get_bucket(environment, "table.html", filename, source + "<!-- changed -->")
    assert bucket.code is None


def test_once_sealed_nothing_is_added() -> None:
    cache = compiled(["table.html"])
    environment = datasette_environment()
    environment.bytecode_cache = cache
    environment.get_template("index.html")
    assert len(cache) == 1
