"""The operator's dashboard, /-/admin on the apex, for the accounts marked as admins.

    admins.py     who is an admin (`gateway user admin EMAIL`): a table of its own
    history.py    the last 24 hours per tenant, one sample a minute, in memory
    charts.py     small SVG charts, rendered on the server (pure)
    dashboard.py  the page
"""
