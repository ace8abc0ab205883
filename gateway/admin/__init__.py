"""The operator's dashboard, /-/admin on the apex, for the accounts marked as admins
(`gateway user admin EMAIL`: the admins table of the accounts database, auth/store.py; shared by
every edge of a cluster, as the accounts are).

    history.py    the last 24 hours per tenant, one sample a minute, in memory
    charts.py     small SVG charts, rendered on the server (pure)
    dashboard.py  the page
"""
