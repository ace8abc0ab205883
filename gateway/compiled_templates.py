"""Datasette's templates compiled once, in the zygote, for every tenant it forks.

Jinja compiles a template to Python the first time it is rendered, in every process: a woken
tenant's first HTML page (a table's) took 62-66 ms of its CPU, the next about 12 ms. The zygote
(zygote.py) compiles all of Datasette's own templates before it forks, into COMPILED, a Jinja
bytecode cache in its memory; a forked tenant's Datasette is given it (datasette_plugin.py)
and loads the code from there: its first page took 19 ms (bench/wake).

What was compiled is used only where it compiles the same. Jinja's own key is the template's
name and file, and its check the source (a tenant plugin's template of the same name is
another file); the compiled code also depends on the environment, which Jinja leaves to the
user of a bytecode cache: the syntax settings, async mode, extensions, and which filters and
tests exist and what each is passed (context, environment). That is the fingerprint kept with
each template; an environment with another (a plugin that adds a filter) compiles for itself.
Once the zygote has compiled, the cache is sealed: tenants read it and never add to it.
"""

from __future__ import annotations

import logging
from typing import Any

import jinja2

log = logging.getLogger(__name__)


class CompiledTemplates(jinja2.BytecodeCache):
    def __init__(self) -> None:
        self._compiled: dict[str, tuple[tuple[Any, ...], bytes]] = {}
        self.sealed = False

    def __len__(self) -> int:
        return len(self._compiled)

    def load_bytecode(self, bucket: jinja2.bccache.Bucket) -> None:
        found = self._compiled.get(bucket.key)
        if found is not None and found[0] == fingerprint(bucket.environment):
            bucket.bytecode_from_string(found[1])  # Jinja checks the source's checksum

    def dump_bytecode(self, bucket: jinja2.bccache.Bucket) -> None:
        if not self.sealed:
            self._compiled[bucket.key] = (fingerprint(bucket.environment),
                                          bucket.bytecode_to_string())


COMPILED = CompiledTemplates()


def fingerprint(environment: jinja2.Environment) -> tuple[Any, ...]:
    """What of an environment the code Jinja compiles for it depends on."""
    env = environment
    syntax = (env.block_start_string, env.block_end_string, env.variable_start_string,
              env.variable_end_string, env.comment_start_string, env.comment_end_string,
              env.line_statement_prefix, env.line_comment_prefix, env.trim_blocks,
              env.lstrip_blocks, env.newline_sequence, env.keep_trailing_newline)
    return (syntax, env.is_async, env.optimized, tuple(sorted(env.extensions)),
            _passed(env.filters), _passed(env.tests))


def _passed(functions: dict[str, Any]) -> tuple[tuple[str, str], ...]:
    """Each filter's (or test's) name and what Jinja passes it first (pass_context & co.)."""
    return tuple(sorted((name, str(getattr(function, "jinja_pass_arg", "")))
                        for name, function in functions.items()))


def compile_datasette_templates() -> None:
    """In the zygote, before it forks: every template of Datasette's, compiled by an
    environment made as a tenant's Datasette makes its own, into COMPILED; then sealed."""
    from datasette.app import Datasette

    datasette = Datasette([], settings={"num_sql_threads": 0})  # no thread: the zygote forks
    environment = datasette.jinja_env
    environment.bytecode_cache = COMPILED
    for name in environment.list_templates(filter_func=lambda name: name.endswith(".html")):
        try:
            environment.get_template(name)
        except jinja2.TemplateError as exc:  # a tenant compiles it itself, and says why
            log.warning("template_not_compiled", extra={"template": name, "error": str(exc)})
    COMPILED.sealed = True
