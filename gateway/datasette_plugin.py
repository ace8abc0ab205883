"""The gateway's own Datasette plugin, registered in every tenant's Datasette by tenant_process.py
(not through a plugins folder: that one is the operator's, and Datasette 0.65 takes only one).

It links the gateway's upload page (upload/) from Datasette's menu for signed-in users. The
page itself decides who may upload; the link is only a way there.
"""

from __future__ import annotations

from typing import Any

from datasette import hookimpl


@hookimpl  # type: ignore[untyped-decorator]
def menu_links(actor: dict[str, Any] | None) -> list[dict[str, str]]:
    if not actor:
        return []
    return [{"href": "/-/upload", "label": "Upload CSV files"}]
