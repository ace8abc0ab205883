"""The gateway: the edge of a multi-tenant Datasette host.

Kept empty on purpose: `gateway.tenant_process` is imported inside every tenant's sandbox.
"""
